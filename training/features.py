"""Frozen-backbone features over an image set (eval mode, no augmentation), batched."""
from __future__ import annotations

import numpy as np
import torch

from .data import ImageSet
from .views import InputSpec, eval_transform


def subset(count: int | None, total: int, seed: int = 0) -> np.ndarray:
    """A fixed random subset of indices (all of them when count is None or >= total)."""
    if count is None or count >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


@torch.no_grad()
def extract(backbone: torch.nn.Module, images: ImageSet, spec: InputSpec, indices=None, batch_size: int = 512,
            device: str | torch.device = "cpu") -> torch.Tensor:
    transform = eval_transform(spec)
    indices = np.arange(len(images)) if indices is None else np.asarray(indices)
    was_training = backbone.training
    backbone.eval()
    out = []
    try:
        for start in range(0, len(indices), batch_size):
            batch = torch.stack([transform(images.image(int(i))) for i in indices[start:start + batch_size]])
            out.append(backbone(batch.to(device)).float().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out)
