"""The optimizer groups and lr schedules the trainer builds from train.optim."""

from __future__ import annotations

import math

import pytest
import torch

from oneformer.spec import OptimConfig
from oneformer.training.optim import build_optimizer, build_schedule, lr_factor, param_groups


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.pixel_level_module = torch.nn.Module()
        self.model.pixel_level_module.encoder = torch.nn.Linear(2, 2)  # the backbone, by HF's naming
        self.head = torch.nn.Linear(2, 2)


def test_backbone_gets_its_multiplier_and_frozen_params_are_left_out() -> None:
    net = Net()
    net.head.bias.requires_grad_(False)
    groups = param_groups(net, OptimConfig(lr=1e-3, backbone_multiplier=0.1))
    assert [g["lr"] for g in groups] == pytest.approx([1e-4, 1e-3])
    assert [len(g["params"]) for g in groups] == [2, 1]


@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_optimizer_steps_on_cpu(kind: str) -> None:
    net = Net()
    opt = build_optimizer(net, OptimConfig(type=kind, lr=0.01))
    before = net.head.weight.detach().clone()
    net.head(torch.ones(1, 2)).sum().backward()
    opt.step()
    assert not torch.equal(before, net.head.weight)


def test_schedules() -> None:
    multi = lr_factor(OptimConfig(lr_scheduler="MultiStep", milestones=[2, 4], gamma=0.1), 60, 6)
    assert [multi(s) for s in (0, 19, 20, 40)] == pytest.approx([1, 1, 0.1, 0.01])
    step = lr_factor(OptimConfig(lr_scheduler="StepLR", step_size=3, gamma=0.5), 60, 6)
    assert [step(s) for s in (29, 30)] == pytest.approx([1, 0.5])
    poly = lr_factor(OptimConfig(lr_scheduler="Poly"), 100, 10)
    assert poly(0) == 1 and poly(50) == pytest.approx(0.5**0.9) and poly(100) == 0
    cos = lr_factor(OptimConfig(lr_scheduler="Cosine"), 100, 10)
    assert cos(50) == pytest.approx(0.5) and cos(100) == pytest.approx(0, abs=1e-12)
    warm = lr_factor(OptimConfig(lr_scheduler="Constant", warmup_epochs=1), 100, 10)
    assert [warm(s) for s in (0, 4, 9, 50)] == pytest.approx([0.1, 0.5, 1, 1])


def test_schedule_drives_the_learning_rate() -> None:
    net = Net()
    opt = build_optimizer(net, OptimConfig(lr=0.01, backbone_multiplier=1.0, lr_scheduler="Cosine"))
    sched = build_schedule(opt, OptimConfig(lr_scheduler="Cosine"), 10, 1)
    for _ in range(5):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.5)))
