"""train.activation_checkpoint: the memory autograd keeps for backward, and the step time, with and without
gradient checkpointing of the backbone (JSON out).

Both networks hold the same weights and run in this process in alternating rounds on the same batch. Memory is
the total size of the tensors autograd saves for backward during the forward pass (what checkpointing
recomputes instead of keeping), measured with torch's saved-tensor hooks. That makes it exact and repeatable on
CPU, where torch reports no peak allocation. The goal is that the backbone's share of that memory goes away at a
bounded cost in step time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from oneformer.data.tokenizer import TextTable
from oneformer.model.network import build_network, checkpoint_backbone, hf_config, num_text, set_training_mode
from oneformer.presets import preset_path
from oneformer.spec import load_spec

CLASSES = ["sky", "grass", "road", "circle", "square", "triangle"]


def step(net, batch: dict) -> tuple[int, float]:  # noqa: ANN001 - a OneFormer network
    """One forward + backward; returns (bytes saved for backward, seconds)."""
    kept = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        kept[0] += t.numel() * t.element_size()
        return t

    net.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = net(**batch).loss
    loss.backward()
    return kept[0], time.perf_counter() - t0


def main() -> None:
    """Run the comparison and print JSON."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="smoke", help="spec preset whose model is measured (smoke, swin_tiny)")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()

    spec = load_spec(preset_path(args.preset), {"model.sem_seg_head.num_classes": len(CLASSES)})
    config = hf_config(spec.model, CLASSES)
    torch.manual_seed(0)
    plain = build_network(config)
    checkpointed = build_network(config)
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpoint_backbone(checkpointed), "the backbone does not support gradient checkpointing"
    for net in (plain, checkpointed):
        set_training_mode(net, True)
    text = TextTable(CLASSES, config.task_seq_len, config.text_encoder_context_length)
    s, b = args.size, args.batch
    masks = (torch.arange(s)[None, :, None] < s // 2).float().expand(1, s, s)
    batch = {"pixel_values": torch.randn(b, 3, s, s),
             "task_inputs": torch.stack([text.task_ids["semantic"]] * b),
             "text_inputs": torch.stack([text.text_inputs("semantic", torch.tensor([1]), num_text(config))] * b),
             "mask_labels": [masks] * b, "class_labels": [torch.tensor([1])] * b}
    step(plain, batch), step(checkpointed, batch)  # warm-up
    rounds: dict[str, list[tuple[int, float]]] = {"plain": [], "checkpointed": []}
    for _ in range(args.rounds):
        rounds["plain"].append(step(plain, batch))
        rounds["checkpointed"].append(step(checkpointed, batch))
    kept = {k: v[0][0] for k, v in rounds.items()}  # the same every round
    seconds = {k: statistics.median(t for _, t in v) for k, v in rounds.items()}
    time_ratio = statistics.median(c[1] / p[1] for p, c in zip(rounds["plain"], rounds["checkpointed"], strict=True))
    print(json.dumps({
        "benchmark": "activation_checkpoint", "preset": args.preset, "input": [b, 3, s, s],
        "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
        "saved_for_backward_mb": {k: round(v / 2**20, 1) for k, v in kept.items()},
        "memory_saved_pct": round(100 * (1 - kept["checkpointed"] / kept["plain"]), 1),
        "step_s": {k: round(v, 3) for k, v in seconds.items()},
        "step_time_ratio": round(time_ratio, 3),
    }, indent=1))


if __name__ == "__main__":
    main()
