"""Optimizers and the learning-rate schedule.

Parameter groups: 1-d tensors (BN weights/biases, linear biases) can be excluded from weight
decay and from LARS adaptation, as SimCLR prescribes. The schedule is a pure function of the step,
so resuming needs nothing but the step counter.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def parameter_groups(model: nn.Module, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
    decay, plain = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (plain if exclude_bn_bias and param.ndim <= 1 else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay, "lars": True}]
    if plain:
        groups.append({"params": plain, "weight_decay": 0.0, "lars": False})
    return [g for g in groups if g["params"]]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by the trust ratio
    eta * ||w|| / (||g + wd w||), for groups with ``lars=True`` (others are plain SGD)."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 1e-3):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars=True))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad.add(param, alpha=group["weight_decay"]) if group["weight_decay"] else param.grad.clone()
                if group["lars"]:
                    weight_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    trust = torch.where((weight_norm > 0) & (update_norm > 0),
                                        group["eta"] * weight_norm / update_norm, torch.ones_like(weight_norm))
                    update.mul_(trust)
                state = self.state[param]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                param.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(model: nn.Module, name: str, lr: float, momentum: float, weight_decay: float,
                    exclude_bn_bias: bool, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """`groups` (optional) replaces parameter_groups(model, ...); a group's `lr_scale` multiplies its lr."""
    groups = groups if groups is not None else parameter_groups(model, weight_decay, exclude_bn_bias)
    if not groups:
        raise ValueError("no trainable parameters: check `trainable`")
    if name == "sgd":
        for group in groups:
            group.pop("lars")
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'lars'")


def scaled_lr(base_lr: float, batch_size: int, scaling: str, reference_batch: int) -> float:
    """Large-batch scaling: linear (MoCo: lr x batch/256) or sqrt (SimCLR v2: 0.075 x sqrt(batch))."""
    if scaling == "linear":
        return base_lr * batch_size / reference_batch
    if scaling == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if scaling == "none":
        return base_lr
    raise ValueError(f"unknown lr_scaling {scaling!r}; use linear, sqrt or none")


def cosine_lr(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0) -> float:
    """Linear warm-up to `peak_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""
    if warmup_steps and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_lr(step: int, total_steps: int, peak_lr: float, warmup_steps: int = 0) -> float:
    """The HPT study's fine-tuning schedule: x0.1 at 1/3 and at 2/3 of the steps (after any warm-up)."""
    if warmup_steps and step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr * 0.1 ** sum(step >= round(total_steps * k / 3) for k in (1, 2))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
