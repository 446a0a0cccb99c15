"""Rotation prediction (Gidaris et al. 2018), the cheap pretext-task baseline: every image is shown at
0, 90, 180 and 270 degrees and a linear head on the pooled backbone features names the rotation
(4-way cross-entropy). Needs square inputs (the views are). Exports as `rotation-<domain>-<arch>`.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .branch import OneBranch


def rotations(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[B, C, H, W] -> ([4B, C, H, W], [4B] labels): all four copies of each image, label k = k x 90 degrees."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation prediction needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
    labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


def rotation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, labels)


class Rotation(OneBranch):
    branch = "encoder"
    name = "rotation"

    def __init__(self, backbone: nn.Module, feature_dim: int):
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(feature_dim, 4)))

    def forward(self, view1: torch.Tensor, view2=None) -> torch.Tensor:
        images, labels = rotations(view1)
        # one forward over the 4B copies: BN statistics see all rotations together
        return rotation_loss(self.run(images), labels)


def build(config: dict, backbone, source) -> Rotation:
    return Rotation(backbone.module, backbone.num_features)
