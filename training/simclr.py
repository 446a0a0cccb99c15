"""SimCLR v2: one encoder, a 3-layer projection head with BN, NT-Xent over 2N views.

Negatives are global: under DDP every rank's embeddings are gathered (with gradient), so each
query sees the 2N-2 negatives of the whole batch, not only its rank's share.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import dist
from .branch import OneBranch
from .heads import mlp_head
from .similarity import similarity_logits


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, gather=dist.gather_with_grad,
            rank: int | None = None) -> torch.Tensor:
    """NT-Xent for this rank's pairs (z1[i], z2[i]) against the whole (gathered) batch.

    z1, z2: [n, D] L2-normalised views of the same n images. Row i of view 1 has its positive at
    view-2 position i; itself is masked out; every other of the 2N embeddings is a negative.
    """
    n = z1.shape[0]
    rank = dist.rank() if rank is None else rank
    all1, all2 = gather(z1), gather(z2)
    total = all1.shape[0]
    keys = torch.cat([all1, all2])  # [2N, D]
    queries = torch.cat([z1, z2])  # [2n, D]
    logits = similarity_logits(queries, keys, temperature)
    mine = torch.arange(n, device=z1.device) + rank * n
    self_index = torch.cat([mine, mine + total])
    positive_index = torch.cat([mine + total, mine])
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, self_index] = float("-inf")
    return (torch.logsumexp(logits, dim=1) - logits[rows, positive_index]).mean()


class SimCLR(OneBranch):
    """One network (backbone + projection head) over both views; no key encoder."""
    name = "simclr"
    branch = "encoder"
    views = 2

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 128, hidden: int = 2048,
                 temperature: float = 0.1, head_layers: int = 3):
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict(
            backbone=backbone, head=mlp_head(feature_dim, hidden, dim, layers=head_layers, batchnorm=True)))
        self.temperature = temperature

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        # one forward over both views: BN statistics over 2n images as in the reference implementation
        z = F.normalize(self.run(torch.cat([view1, view2])), dim=1)
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.temperature)
