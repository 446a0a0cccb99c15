"""Projection heads shared by the contrastive methods."""
from __future__ import annotations

from torch import nn


def mlp_head(in_dim: int, hidden: int, out_dim: int, layers: int = 2, batchnorm: bool = False) -> nn.Sequential:
    """`layers` linear layers, ReLU between them.

    MoCo v2: 2 layers, no BN. SimCLR v2: 3 layers with BN after each (the last without bias and
    ReLU), so that fine-tuning can keep the first block (`head[0]`) and drop the rest.
    """
    blocks = []
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    for index in range(layers):
        last = index == layers - 1
        block = [nn.Linear(dims[index], dims[index + 1], bias=not batchnorm)]
        if batchnorm:
            block.append(nn.BatchNorm1d(dims[index + 1]))
        if not last:
            block.append(nn.ReLU(inplace=True))
        blocks.append(nn.Sequential(*block))
    return nn.Sequential(*blocks)
