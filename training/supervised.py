"""Supervised training: a linear head on the backbone, cross-entropy (single-label, optional label
smoothing) or binary cross-entropy (multi-label), on all labels or a class-covering subset.

Two schedules, as in the HPT study: "full" training from random init (cosine lr, the ResNet recipe)
and "finetune" from a zoo checkpoint (`init`): lr x0.1 at 1/3 and 2/3 of the steps, the new head at
`head_lr_scale` x the backbone's lr, weight decay 0 (recipes/supervised_finetune_fashion_r18c.yaml).
The exported backbone is a `sup-<domain>-<arch>` base. Dropout before the head and stochastic depth
in the backbone are the noise Noisy Student's students use (training.selftrain).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batches import _PRIME, StepBatches
from .branch import OneBranch


# ---------------------------------------------------------------- pieces shared with selftrain / distill
class IndexBatches(StepBatches):
    """StepBatches over a fixed list of dataset indices (a labelled subset): epochs of that list."""

    def __init__(self, images, transform, batch_size, seed, rank=0, world_size=1, views=1, indices=None):
        super().__init__(images, transform, batch_size, seed, rank, world_size, views)
        self.indices = torch.as_tensor(np.arange(len(images)) if indices is None else indices, dtype=torch.long)
        if batch_size > len(self.indices):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self.indices)} labelled images; "
                             f"lower batch_size or raise labels")
        self.steps_per_epoch = len(self.indices) // batch_size

    def positions(self, step: int) -> torch.Tensor:
        epoch, batch = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * _PRIME + epoch)
            self._epoch, self._order = epoch, self.indices[torch.randperm(len(self.indices), generator=generator)]
        start = batch * self.batch_size + self.offset
        return self._order[start:start + self.local]


def labelled_indices(source, count: int, seed: int = 0) -> np.ndarray:
    """`count` labelled images (every class present when single-label); 0 or >= N: all of them."""
    if not count or count >= len(source):
        return np.arange(len(source))
    if source.multi_label:
        return np.sort(np.random.default_rng(seed).choice(len(source), size=count, replace=False))
    from .evaluate import labelled_subset

    return labelled_subset(source.labels(), count, seed)


def add_stochastic_depth(module: nn.Module, rate: float) -> int:
    """Stochastic depth on every residual block timm builds with a `drop_path` slot, the rate rising
    linearly with depth to `rate` (timm's rule). Parameter-free: exported weights are unchanged."""
    from timm.layers import DropPath

    blocks = [m for m in module.modules() if hasattr(m, "drop_path") and isinstance(m.drop_path, nn.Module)]
    for index, block in enumerate(blocks):
        block.drop_path = DropPath(rate * index / max(1, len(blocks) - 1)) if rate > 0 else nn.Identity()
    return len(blocks)


def classifier(backbone: nn.Module, feature_dim: int, classes: int, dropout: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(feature_dim, classes)) if dropout else \
        nn.Sequential(nn.Linear(feature_dim, classes))
    return nn.Sequential(OrderedDict(backbone=backbone, head=head))


def supervised_loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool = False,
                    label_smoothing: float = 0.0) -> torch.Tensor:
    """CE with integer or soft targets (label smoothing on integer ones), or BCE for multi-hot targets."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype))
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


def head_lr_groups(model: nn.Sequential, weight_decay: float, exclude_bn_bias: bool, head_lr_scale: float):
    """The optimizer's parameter groups: the backbone's, then the head's at lr x head_lr_scale
    (training.optim.set_lr multiplies each group's lr by its `lr_scale`)."""
    from .optim import parameter_groups

    groups = parameter_groups(model.backbone, weight_decay, exclude_bn_bias)
    for group in parameter_groups(model.head, weight_decay, exclude_bn_bias):
        groups.append({**group, "lr_scale": head_lr_scale})
    return groups


class Supervised(OneBranch):
    name = "supervised"
    uses_indices = True

    def __init__(self, backbone: nn.Module, feature_dim: int, targets: torch.Tensor, multi_label: bool = False,
                 label_smoothing: float = 0.0, dropout: float = 0.0, labelled: np.ndarray | None = None,
                 head_lr_scale: float = 1.0):
        super().__init__()
        classes = targets.shape[1] if multi_label else int(targets.max()) + 1
        self.model = classifier(backbone, feature_dim, classes, dropout)
        self.register_buffer("targets", targets, persistent=False)  # the data's labels, not run state
        self.multi_label, self.label_smoothing, self.head_lr_scale = multi_label, label_smoothing, head_lr_scale
        self.labelled = labelled

    def parameter_groups(self, weight_decay: float, exclude_bn_bias: bool) -> list[dict]:
        return head_lr_groups(self.model, weight_decay, exclude_bn_bias, self.head_lr_scale)

    def make_batches(self, images, transform, batch_size, seed, rank=0, world_size=1, views=1) -> IndexBatches:
        return IndexBatches(images, transform, batch_size, seed, rank, world_size, 1, self.labelled)

    def forward(self, view1: torch.Tensor, view2=None, indices: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.run(view1)
        targets = self.targets.index_select(0, indices.to(self.targets.device))
        return supervised_loss(logits, targets, self.multi_label, self.label_smoothing)


def source_targets(source) -> torch.Tensor:
    try:
        return torch.from_numpy(source.labels())
    except ValueError as error:
        from .config import ConfigError
        raise ConfigError(f"supervised training needs labels: {error}") from None


def build(config: dict, backbone, source) -> Supervised:
    add_stochastic_depth(backbone.module, config["drop_path"])
    return Supervised(backbone.module, backbone.num_features, source_targets(source), source.multi_label,
                      config["label_smoothing"], config["dropout"],
                      labelled_indices(source, config["labels"], config["seed"]), config["head_lr_scale"])
