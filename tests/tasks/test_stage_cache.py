"""Stage caching as reruns use it: a stage is reused while its inputs and its output files are unchanged."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, task

from oneformer.spec import ExperimentSpec, load_spec
from tasks.stage_cache import cached, with_outputs

CALLS: list[str] = []


@task
def convert(spec: ExperimentSpec, checkpoint: str, out: str) -> dict:
    """A stand-in stage: reads a model file, writes an output file, counts its runs."""
    CALLS.append(checkpoint)
    Path(out).write_text(f"converted {Path(checkpoint).read_text()}")
    return with_outputs({"file": out}, [out])


@flow
def run_stage(spec: ExperimentSpec, results: str, checkpoint: str, out: str) -> dict:
    return cached(convert, Path(results), "export", ("checkpoint",))(spec=spec, checkpoint=checkpoint, out=out)


def test_a_stage_reruns_only_when_its_inputs_or_outputs_change(prefect_api, tmp_path: Path) -> None:  # noqa: ANN001
    spec = load_spec(None, {"results_dir": str(tmp_path)})
    checkpoint, out = tmp_path / "model.pth", tmp_path / "model.onnx"
    checkpoint.write_text("weights v1")
    args = dict(results=str(tmp_path), checkpoint=str(checkpoint), out=str(out))
    CALLS.clear()

    first = run_stage(spec, **args)
    assert first == {"file": str(out)} and len(CALLS) == 1
    run_stage(spec, **args)
    assert len(CALLS) == 1  # same spec, same model file content, output intact: cached
    checkpoint.write_text("weights v2")  # the same path, new content
    run_stage(spec, **args)
    assert len(CALLS) == 2 and out.read_text() == "converted weights v2"
    out.unlink()  # the output was deleted since: computed again, not a result naming a missing file
    run_stage(spec, **args)
    assert len(CALLS) == 3 and out.is_file()
    run_stage(load_spec(None, {"results_dir": str(tmp_path), "export.input_height": 320}), **args)
    assert len(CALLS) == 4  # a spec key the stage reads changed
    run_stage(load_spec(None, {"results_dir": str(tmp_path), "export.input_height": 320, "evaluate.batch_size": 3}),
              **args)
    assert len(CALLS) == 4  # a section it does not read did not
    assert list((tmp_path / ".cache" / "stages").iterdir())  # results persist beside the run's other results
