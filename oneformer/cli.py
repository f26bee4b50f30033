"""TAO-style command line: `oneformer <action> -e SPEC [key=value ...]`, and the same as `mask2former` and
`segformer` (the network from the command's name unless the spec's model.arch names it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from oneformer.actions import ACTIONS, TABLE
from oneformer.errors import OneFormerError, SpecError
from oneformer.spec import dump_spec, load_spec

log = logging.getLogger("oneformer")


DESCRIPTIONS = {"oneformer": "OneFormer universal segmentation, TAO-compatible.",
                "mask2former": "Mask2Former segmentation (one task per model), TAO-compatible.",
                "segformer": "SegFormer semantic segmentation, TAO-compatible."}


def _parser(prog: str = "oneformer") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTIONS[prog])
    sub = p.add_subparsers(dest="command", required=True)
    for action in TABLE.values():
        a = sub.add_parser(action.name, help=action.summary, description=action.summary)
        a.add_argument("-e", "--experiment_spec", required=True, help="YAML experiment spec")
        a.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.num_epochs=10")
    d = sub.add_parser("default_specs", help="write a commented spec template per action")
    d.add_argument("--action", action="append", choices=ACTIONS, help="action(s); all when omitted")
    d.add_argument("-e", "--experiment_spec", help="a spec whose values the templates take (TAO style); "
                   "default: the code's defaults")
    d.add_argument("-o", "--output", help="folder (default: <results_dir>/default_specs)")
    d.add_argument("overrides", nargs="*", help="results_dir=... (TAO style)")
    c = sub.add_parser("check", help="validate a spec and the data paths an action needs")
    c.add_argument("-e", "--experiment_spec", required=True)
    c.add_argument("--action", required=True, choices=ACTIONS)
    c.add_argument("--deep", action="store_true",
                   help="decode every image and mask (train runs this itself); default: headers only, fast")
    c.add_argument("overrides", nargs="*")
    s = sub.add_parser("synth", help="generate the synthetic demo dataset in TAO's bucket layout")
    s.add_argument("--out", required=True)
    s.add_argument("--train", type=int, default=64)
    s.add_argument("--val", type=int, default=16)
    s.add_argument("--size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--arch", choices=list(DESCRIPTIONS), default=None,
                   help="whose layout and spec to write (default: this command's network): oneformer and "
                        "mask2former the COCO panoptic bucket, segformer images/<split> + masks/<split>")
    k = sub.add_parser("cache", help="list or prune the staging cache ($ONEFORMER_CACHE, capped by "
                       "ONEFORMER_CACHE_MAX_GB)")
    kv = k.add_subparsers(dest="cache_command", required=True)
    kv.add_parser("list", help="entries, sizes, last use, source, complete or not").add_argument(
        "--json", action="store_true", help="machine-readable output")
    kp = kv.add_parser("prune", help="remove entries no running process uses (default: down to the cap)")
    how = kp.add_mutually_exclusive_group()
    how.add_argument("--max-gb", type=float, help="remove least-recently-used entries until the cache fits")
    how.add_argument("--all", action="store_true", help="remove every entry not in use")
    kp.add_argument("--incomplete", action="store_true", help="remove what interrupted runs left behind")
    j = sub.add_parser("schema", help="write specs/schemas/<action>.schema.json")
    j.add_argument("-o", "--output", default="specs/schemas")
    return p


def run(argv: list[str], prog: str = "oneformer") -> int:
    """Parse and dispatch; returns the exit code. `prog` is the command's name: `mask2former` and `segformer` read
    specs as theirs where the spec does not say (model.arch)."""
    args = _parser(prog).parse_args(argv)
    arch = None if prog == "oneformer" else prog
    if args.command in ACTIONS:
        spec = load_spec(args.experiment_spec, args.overrides, arch)
        result = TABLE[args.command].entry()(spec)
        if result:
            print(json.dumps(result, indent=1, default=str))
        return 0
    if args.command == "default_specs":
        from oneformer.templates import write_templates

        base = load_spec(args.experiment_spec, args.overrides, arch) if args.experiment_spec or arch else None
        results_dir = base.results_dir if base else dict(
            o.split("=", 1) for o in args.overrides if o.startswith("results_dir=")).get("results_dir")
        out = args.output or os.path.join(results_dir or "/results", "default_specs")
        for path in write_templates(out, args.action or list(ACTIONS), results_dir, base, args.experiment_spec):
            print(path)
        return 0
    if args.command == "check":
        from oneformer.check import check

        spec = load_spec(args.experiment_spec, args.overrides, arch)
        print(dump_spec(spec))
        problems = check(spec, args.action, deep=args.deep)
        if problems:
            raise SpecError(problems, f"{args.experiment_spec} for {args.action}")
        print(f"spec and data for {args.action}: OK{' (every file decoded)' if args.deep else ''}")
        return 0
    if args.command == "synth":
        from oneformer.data.synth import generate

        print(generate(args.out, args.train, args.val, args.size, args.seed, arch=args.arch or prog))
        return 0
    if args.command == "cache":
        from oneformer.data import cache

        if args.cache_command == "list":
            print(cache.list_report(args.json))
        else:
            print(cache.prune_report(args.max_gb, args.all, args.incomplete))
        return 0
    from oneformer.templates import write_schemas

    for path in write_schemas(args.output):
        print(path)
    return 0


def main(argv: list[str] | None = None, prog: str = "oneformer") -> None:
    """Console entry point: clean one-paragraph errors for user mistakes, tracebacks only for bugs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(run(sys.argv[1:] if argv is None else argv, prog))
    except OneFormerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def mask2former_main() -> None:
    """The `mask2former` command (TAO's Mask2Former CLI)."""
    main(prog="mask2former")


def segformer_main() -> None:
    """The `segformer` command (TAO's SegFormer CLI)."""
    main(prog="segformer")


if __name__ == "__main__":
    main()
