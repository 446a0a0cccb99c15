"""Rotation prediction (Gidaris et al. 2018), the cheap pretext-task baseline: every image is shown at
0, 90, 180 and 270 degrees and a linear head on the pooled backbone features names the rotation
(4-way cross-entropy). Needs square inputs (the views are). Exports as `rotation-<domain>-<arch>`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] -> ([4B, C, H, W], [4B] labels): all four copies of each image, label k = k x 90 degrees."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, labels)


class Rotation(nn.Module):
    name = "rotation"
    views = 1

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(feature_dim, 4)))
        self._runner = None

    @property
    def backbone(self) -> nn.Module:
        return self.encoder.backbone

    def trainable_module(self) -> nn.Module:
        return self.encoder

    def set_runner(self, runner: nn.Module) -> None:
        object.__setattr__(self, "_runner", runner)

    def reset_key_encoder(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def forward(self, view1: torch.Tensor, view2=None) -> torch.Tensor:
        images, labels = rotations(view1)
        # one forward over the 4B copies: BN statistics see all rotations together
        return rotation_loss((self._runner or self.encoder)(images), labels)

    def head_state_dict(self) -> dict:
        return {f"head.{k}": v for k, v in self.encoder.head.state_dict().items()}


def build(config: dict, backbone, source) -> Rotation:
    return Rotation(backbone.module, backbone.num_features)
