"""Cosine-similarity logits for the contrastive losses, computed at full precision."""
from __future__ import annotations

import torch


def full_precision(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors in float32 (float64 if any is float64): under bf16 autocast the embeddings arrive in bf16."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.to(dtype) for t in tensors]


def similarity_logits(queries: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """queries @ keys.T / temperature, outside autocast. Under bf16 autocast the product would be rounded to
    bf16, whose steps near a cosine of 1 are 2^-8 = 0.004 (0.04 in logits at T = 0.1): on embeddings that
    share a direction (positives at 0.98, negatives at 0.4) that moves the loss by ~6e-4, against ~1e-6 here
    (tests/test_methods_strength.py). The matmul is small next to the encoders."""
    queries, keys = full_precision(queries, keys)
    with torch.autocast(device_type=queries.device.type, enabled=False):
        return queries @ keys.t() / temperature
