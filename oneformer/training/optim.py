"""Optimizer and learning-rate schedule from the spec, shared by the trainer and the overhead benchmark."""

from __future__ import annotations

import math

import torch

from oneformer.model.network import is_backbone_param
from oneformer.spec import OptimConfig


def param_groups(net: torch.nn.Module, opt: OptimConfig) -> list[dict]:
    """Backbone parameters at lr * backbone_multiplier, the rest at lr; frozen ones left out."""
    groups: list[dict] = [{"name": "backbone", "params": [], "lr": opt.lr * opt.backbone_multiplier},
                          {"name": "heads", "params": [], "lr": opt.lr}]
    for name, p in net.named_parameters():
        if p.requires_grad:
            groups[0 if is_backbone_param(name) else 1]["params"].append(p)
    return [g for g in groups if g["params"]]


def describe_groups(optimizer: torch.optim.Optimizer, opt: OptimConfig) -> list[str]:
    """One line per parameter group (train.verbose): TAO users check the backbone's lr scaling this way."""
    scaled = f" (lr {opt.lr:.3g} x backbone_multiplier {opt.backbone_multiplier:g})"
    return [f"  {g['name']}: {len(g['params'])} tensors, {sum(p.numel() for p in g['params']):,} values, lr "
            f"{g['lr']:.3g}{scaled if g['name'] == 'backbone' else ''}, weight_decay {g['weight_decay']:g}"
            for g in optimizer.param_groups]


def build_optimizer(net: torch.nn.Module, opt: OptimConfig) -> torch.optim.Optimizer:
    """SGD or AdamW (momentum is AdamW's beta1); fused kernels where torch has them for the device."""
    groups = param_groups(net, opt)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    if opt.type == "SGD":
        return torch.optim.SGD(groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay, fused=fused)
    return torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.momentum, 0.999), weight_decay=opt.weight_decay,
                             fused=fused)


def lr_factor(opt: OptimConfig, total_steps: int, epochs: int):  # noqa: ANN201 - a step -> factor callable
    """The multiplier of the base lr at each optimizer step: linear warm-up, then the spec's schedule."""
    total = max(total_steps, 1)
    per_epoch = max(total // max(epochs, 1), 1)
    warm = opt.warmup_epochs * per_epoch

    def factor(step: int) -> float:
        warm_f = min(1.0, (step + 1) / warm) if warm else 1.0
        epoch = step // per_epoch
        if opt.lr_scheduler == "MultiStep":
            return warm_f * opt.gamma ** sum(epoch >= m for m in opt.milestones)
        if opt.lr_scheduler == "StepLR":
            return warm_f * opt.gamma ** (epoch // opt.step_size)
        if opt.lr_scheduler == "Poly":
            return warm_f * max(1 - step / total, 0.0) ** 0.9
        if opt.lr_scheduler == "Cosine":
            return warm_f * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
        return warm_f

    return factor


def build_schedule(optimizer: torch.optim.Optimizer, opt: OptimConfig, total_steps: int,
                   epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step LambdaLR over `lr_factor`."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(opt, total_steps, epochs))
