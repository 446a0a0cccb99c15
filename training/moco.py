"""MoCo v2: momentum key encoder, a queue of negative keys, MLP head, InfoNCE (optionally symmetric).

Batch-norm leakage (a query and its positive key sharing batch statistics lets the network cheat)
is handled on the key side: under DDP the key batch is shuffled across ranks before the key
encoder and un-shuffled after (shuffle-BN); in one process the shuffled key batch is split into
`bn_splits` groups whose statistics are computed separately (split-BN).
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import dist
from .heads import mlp_head
from .similarity import full_precision, similarity_logits


def info_nce(query: torch.Tensor, key: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean cross-entropy of [q.k+, q.queue] / T with the positive at index 0.

    query, key: [N, D] L2-normalised; queue: [K, D] L2-normalised negatives.
    """
    query, key = full_precision(query, key)
    positive = (query * key).sum(dim=1, keepdim=True) / temperature
    logits = torch.cat([positive, similarity_logits(query, queue, temperature)], dim=1)
    # target 0 for every row: -log softmax at column 0, written out to skip building a label tensor
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


@torch.no_grad()
def momentum_update(target: list[torch.Tensor], source: list[torch.Tensor], momentum: float) -> None:
    """target <- momentum * target + (1 - momentum) * source, one fused pass over all tensors."""
    torch._foreach_lerp_(target, source, 1.0 - momentum)


@torch.no_grad()
def batch_similarities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """[cos to the positive, cos to the other images' keys, the queries' mean pairwise cos] over one batch
    (float64; query, key: [N, D] L2-normalised, N >= 2): whether the network tells images apart at all."""
    query, key = query.detach().double(), key.detach().double()
    n = len(query)
    to_keys, among_queries = query @ key.t(), query @ query.t()
    positive = to_keys.diagonal().mean()
    other = (to_keys.sum() - to_keys.diagonal().sum()) / (n * n - n)
    spread = (among_queries.sum() - among_queries.diagonal().sum()) / (n * n - n)
    return torch.stack([positive, other, spread])


def collapse_message(similarities: dict, step: int, init: str | None = None, arch: str | None = None,
                     trainable: str = "all") -> str | None:
    """A warning when the logged similarities say the outputs have collapsed: every query points the same way
    and is no closer to its own positive key than to the other images' keys. From there MoCo lowers its loss
    only through the queue's age (keys computed now vs keys enqueued earlier), and it does not leave that
    state (issue 13: MobileNetV2 from scratch at 28-64 px, every recipe tried; ResNet-18 from scratch on digits;
    MobileNetV2 from its supervised ImageNet weights too). `init`: the pretrained start, if any, since the
    advice differs: a run from scratch should start from a base, a run from a base should change the base; and
    `arch` / `trainable`, since what was seen differs: a MobileNetV2 base collapses under HPT, a ResNet-18 base does
    not, but its HPT-BN run (BN affine parameters only, at the study's 3x higher lr) did on digits.
    """
    if not similarities or similarities["query_spread"] < 0.99 or \
            similarities["cos_positive"] - similarities["cos_other"] > 0.01:
        return None
    state = (f"MoCo's outputs have collapsed by step {step}{f' (started from {init})' if init else ''}: queries' "
             f"mean pairwise cosine {similarities['query_spread']:.4f}, a query is as close to other images' keys "
             f"({similarities['cos_other']:.4f}) as to its own positive ({similarities['cos_positive']:.4f}), so the "
             f"loss now falls only through the queue's age and the contrastive objective no longer tells images "
             f"apart. ")
    if init and trainable == "bn":
        return state + ("Seen in HPT-BN (only BatchNorm's affine parameters train, lr 0.1 at batch 256) by step 50 "
                        "from the supervised MobileNetV2 and, on the 8x8 digits, from a ResNet-18 MoCo base (not on "
                        "the animal silhouettes), where HPT from that base (every parameter, lr 0.03 at batch 256) "
                        "did not collapse on either; the BN overlay it exported still probed about as well as HPT's "
                        "(benchmarks/RESULTS.md, issue 13). For instance discrimination, train every parameter "
                        "(strategy hpt); a lower lr for HPT-BN is untested")
    if init and arch == "mnv2":
        return state + ("Seen from pretrained MobileNetV2 bases (HPT from the supervised ImageNet MobileNetV2 at "
                        "28-64 px collapses by step 50-250; what the backbone still gains then is adaptation to the "
                        "data, not instance discrimination): continue from a ResNet base (arch r18c/r18/r50); see "
                        "README 'Training your own backbone'")
    if init:
        return state + ("Not seen here from a ResNet base with every parameter training (HPT from a ResNet-18 MoCo "
                        "base keeps its queries spread): check that --init is the base you meant (zoo info) and "
                        "try a lower lr")
    return state + ("Seen from scratch with networks that keep no instance information at random init "
                    "(MobileNetV2 at small scale), and with a ResNet on a tiny low-resolution set (r18c on the "
                    "1,347 8x8 digits): start from a pretrained base (--init); from scratch, a ResNet (arch "
                    "r18c/r18/r50) on thousands of images or more; see README 'Training your own backbone'")


class MoCo(nn.Module):
    name = "moco"

    def __init__(self, backbone: nn.Module, feature_dim: int, dim: int = 128, hidden: int = 2048,
                 queue_size: int = 65536, ema_momentum: float = 0.999, temperature: float = 0.2,
                 symmetric: bool = False, bn_splits: int = 1):
        super().__init__()
        self.query = nn.Sequential(OrderedDict(backbone=backbone, head=mlp_head(feature_dim, hidden, dim)))
        self.key = copy.deepcopy(self.query)
        self.key.requires_grad_(False)
        self.ema_momentum, self.temperature = ema_momentum, temperature
        self.symmetric, self.bn_splits = symmetric, max(1, int(bn_splits))
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending_keys = None
        self._query_runner = None  # DDP wrapper of self.query, kept out of the module tree
        self._similarity_sums, self._similarity_batches = None, 0  # on the device: no sync per step

    @property
    def backbone(self) -> nn.Module:
        return self.query.backbone

    def trainable_module(self) -> nn.Module:
        return self.query

    def set_runner(self, runner: nn.Module) -> None:
        object.__setattr__(self, "_query_runner", runner)

    def reset_key_encoder(self) -> None:
        """Key encoder := query encoder (used when starting from a pretrained backbone)."""
        self.key.load_state_dict(self.query.state_dict())

    def encode_query(self, images: torch.Tensor) -> torch.Tensor:
        runner = self._query_runner or self.query
        return F.normalize(runner(images), dim=1)

    @torch.no_grad()
    def encode_key(self, images: torch.Tensor) -> torch.Tensor:
        if dist.is_distributed():
            return self._shuffled_across_ranks(images)
        order = torch.randperm(images.shape[0], device=images.device)
        keys = torch.cat([self.key(chunk) for chunk in images[order].chunk(self.bn_splits)])
        restored = torch.empty_like(keys)
        restored[order] = keys
        return F.normalize(restored, dim=1)

    def _shuffled_across_ranks(self, images: torch.Tensor) -> torch.Tensor:
        local = images.shape[0]
        everything = dist.gather_no_grad(images)
        order = dist.broadcast_(torch.randperm(everything.shape[0], device=images.device))
        mine = order[dist.rank() * local:(dist.rank() + 1) * local]
        keys = dist.gather_no_grad(self.key(everything[mine]))
        restored = torch.empty_like(keys)
        restored[order] = keys
        return F.normalize(restored[dist.rank() * local:(dist.rank() + 1) * local], dim=1)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        self.momentum_step()
        queue = self.queue
        if self.symmetric:
            k1, k2 = self.encode_key(view1), self.encode_key(view2)
            q1, q2 = self.encode_query(view1), self.encode_query(view2)
            loss = 0.5 * (info_nce(q1, k2, queue, self.temperature) + info_nce(q2, k1, queue, self.temperature))
            self._pending_keys = torch.cat([k1, k2])
        else:
            k2 = self.encode_key(view2)
            q1 = self.encode_query(view1)
            loss = info_nce(q1, k2, queue, self.temperature)
            self._pending_keys = k2
        self._record_similarities(q1, k2)
        return loss

    @torch.no_grad()
    def _record_similarities(self, query: torch.Tensor, key: torch.Tensor) -> None:
        """Accumulate, for the log, what says whether the network tells images apart (benchmarks/RESULTS.md,
        issue 13: a collapsed MoCo lowers its loss only through the queue's age)."""
        if len(query) < 2:
            return
        values = batch_similarities(query, key)
        self._similarity_sums = values if self._similarity_sums is None else self._similarity_sums + values
        self._similarity_batches += 1

    def pop_similarities(self) -> dict:
        """Means since the last call: cosine of a query to its positive key and to the other images' keys in the
        batch, and the queries' mean pairwise cosine (their spread). Empty when nothing was recorded."""
        if not self._similarity_batches:
            return {}
        positive, other, spread = (self._similarity_sums / self._similarity_batches).tolist()
        self._similarity_sums, self._similarity_batches = None, 0
        return {"cos_positive": positive, "cos_other": other, "query_spread": spread}

    def after_backward(self) -> None:
        """Enqueue this step's keys. Deferred until after backward because the loss graph holds the
        queue: writing it in place earlier would corrupt the gradient (autograd refuses), and a copy
        of a 65k-key queue every step is what this avoids."""
        if self._pending_keys is not None:
            self.enqueue(self._pending_keys)
            self._pending_keys = None

    @torch.no_grad()
    def momentum_step(self) -> None:
        """Update the key encoder from the query encoder (before computing keys, as in MoCo)."""
        pairs = [(k, q) for k, q in zip(self.key.parameters(), self.query.parameters())]
        momentum_update([k for k, _ in pairs], [q.detach() for _, q in pairs], self.ema_momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        keys = dist.gather_no_grad(keys)  # one global queue, identical on every rank
        size = self.queue.shape[0]
        if keys.shape[0] >= size:
            keys = keys[-size:]
        slots = (self.queue_ptr + torch.arange(keys.shape[0], device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def head_state_dict(self) -> dict:
        return {f"head.{k}": v for k, v in self.query.head.state_dict().items()}
