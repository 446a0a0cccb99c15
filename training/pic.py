"""PIC, Parametric Instance Classification (Cao et al. 2020): every training image is a class.

One branch: z = normalize(MLP(f(x))); logits_j = cos(W_j, z) / tau over N instance classes; the
target is the image's own index. Three parts keep a step's cost independent of N:

- Sliding-window data scheduler (`window_positions`): the indices are shuffled once; "epoch" w is
  the window of D consecutive entries starting at w*S (mod N), shuffled within; so an image comes
  back after ~D images, not N. The position is a pure function of (seed, step): the checkpoint's
  step counter is the scheduler's position (also kept in the `schedule_position` buffer).
- Recent-negative sampling: the softmax runs over the batch's instances plus the K most recently
  seen ones (a FIFO of ids), never over all N.
- Lazy weight correction (`LazyRows`): SGD with momentum m and weight decay lambda moves a row
  even with zero gradient, (w, u) <- A_t (w, u), A_t = [[1 - eta_t lambda, -eta_t m], [lambda, m]].
  Each row remembers the step it was last brought up to; when sampled again the missed steps are
  applied as one 2x2 product. Products over aligned power-of-two step blocks are kept (float64),
  so any gap costs O(log steps) 2x2 products per row: the rows equal dense SGD, without touching
  the unsampled ones.

Under DDP the rows are *replicated*, not sharded: each step touches only the B + K sampled rows,
whose gradients are averaged across ranks (a [B + K, 128] all-reduce, independent of N), so every
replica applies the same update and rank 0's checkpoint is everyone's. 1.28M x 128 rows with their
momentum take 1.3 GB per process, which fits any device we train on; sharding would add an
all-to-all per step to fetch rows from their owners and only pays off when N x 128 x 8 bytes
exceeds one device (N in the tens of millions).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from . import dist
from .batches import _PRIME, StepBatches
from .branch import OneBranch
from .heads import mlp_head


# ---------------------------------------------------------------- loss
def pic_loss(z: torch.Tensor, weights: torch.Tensor, target: torch.Tensor, temperature: float) -> torch.Tensor:
    """Cross-entropy of cosine logits: z [B, D] (any norm), weights [C, D] (any norm), target [B] in [0, C)."""
    logits = F.normalize(z, dim=1) @ F.normalize(weights, dim=1).t() / temperature
    return F.cross_entropy(logits, target)


# ---------------------------------------------------------------- sliding-window scheduler
def window_settings(images: int, batch_size: int, window: int = 0, stride: int = 0) -> tuple[int, int]:
    """(D, S) with the paper's proportions as defaults: D ~ N/10 (131,072 of 1.28M), S = D/8."""
    window = window or max(batch_size, images // 10)
    window = min(images, window) // batch_size * batch_size  # whole batches per window
    if window < batch_size:
        raise ValueError(f"pic_window must hold at least one batch ({batch_size}) of the {images} images")
    stride = stride or max(1, window // 8)
    return window, stride


def window_coverage(images: int, batch_size: int, steps: int, window: int = 0,
                    stride: int = 0) -> tuple[float, int | None]:
    """(about what fraction of the images a run of `steps` visits, the smallest stride whose windows reach them
    all in the run's whole windows, or None when no stride up to the window can). The windows slide S per
    window, so one pass over the set takes N/S windows (~8 epochs at the paper's proportions): a short run sees
    only the first part of the shuffled order, each image D/S times."""
    window, stride = window_settings(images, batch_size, window, stride)
    whole, part = divmod(steps, window // batch_size)
    partial = part / (window // batch_size)  # the last window's draws are uniform over it: its new S slots
    reach = partial * window if whole == 0 else (whole - 1) * stride + window + partial * stride
    needed = -(-(images - window) // (whole - 1)) if whole > 1 else None
    return min(1.0, reach / images), (max(stride, needed) if needed is not None and needed <= window else None)


class WindowBatches(StepBatches):
    """StepBatches whose step -> images mapping is PIC's sliding window instead of epochs."""

    def __init__(self, images, transform, batch_size, seed, rank=0, world_size=1, views=1, window=0, stride=0):
        super().__init__(images, transform, batch_size, seed, rank, world_size, views)
        self.window, self.stride = window_settings(len(images), batch_size, window, stride)
        self.steps_per_window = self.window // batch_size
        self._order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * _PRIME + 7919))
        self._window, self._inner = None, None

    def position(self, step: int) -> tuple[int, int]:
        """(window index, batch within the window)."""
        return divmod(step, self.steps_per_window)

    def positions(self, step: int) -> torch.Tensor:
        window, batch = self.position(step)
        if window != self._window:
            generator = torch.Generator().manual_seed((self.seed * _PRIME + window) * 31 + 17)
            self._window, self._inner = window, torch.randperm(self.window, generator=generator)
        start = batch * self.batch_size + self.offset
        slots = (window * self.stride + self._inner[start:start + self.local]) % len(self.images)
        return self._order[slots]


# ---------------------------------------------------------------- lazy rows
class DecayProducts:
    """Products of the zero-gradient SGD matrices A_t over step ranges, from aligned power-of-two blocks.

    Flat float64 table: entry 0 is the identity; level l (block length 2^l) starts at offset[l]."""

    def __init__(self, momentum: float, weight_decay: float):
        self.momentum, self.weight_decay = momentum, weight_decay
        self.lrs: list[float] = []
        self._allocate(1024)

    def _allocate(self, capacity: int) -> None:
        self.capacity = capacity
        self.levels = capacity.bit_length()  # capacity is a power of two: levels 0..log2(capacity)
        self.offsets = [1]
        for level in range(self.levels - 1):
            self.offsets.append(self.offsets[-1] + (capacity >> level))
        self.table = torch.zeros(self.offsets[-1] + 1, 2, 2, dtype=torch.float64)
        self.table[0] = torch.eye(2, dtype=torch.float64)
        self._offsets_tensor = torch.tensor(self.offsets, dtype=torch.long)
        recorded, self.lrs = self.lrs, []
        for lr in recorded:
            self.append(lr)

    def append(self, lr: float) -> None:
        step = len(self.lrs)
        if step >= self.capacity:
            self._allocate(self.capacity * 2)  # re-records the earlier steps in a table twice as long
        self.lrs.append(lr)
        decay, m = self.weight_decay, self.momentum
        self.table[self.offsets[0] + step] = torch.tensor([[1 - lr * decay, -lr * m], [decay, m]],
                                                          dtype=torch.float64)
        level, index = 0, step
        while level + 1 < self.levels and index % 2 == 1:  # a block of 2^(level+1) steps just completed
            later, earlier = self.table[self.offsets[level] + index], self.table[self.offsets[level] + index - 1]
            level, index = level + 1, index // 2
            self.table[self.offsets[level] + index] = later @ earlier

    def products(self, starts: torch.Tensor, end: int) -> torch.Tensor:
        """[R, 2, 2]: A_{end-1} ... A_{start} for each start (identity where start == end)."""
        starts = starts.to(torch.long).cpu()
        result = torch.eye(2, dtype=torch.float64).expand(len(starts), 2, 2).clone()
        position = starts.clone()
        while True:
            remaining = end - position
            active = remaining > 0
            if not bool(active.any()):
                return result
            # the largest aligned block starting here that fits: min(trailing zeros, floor(log2(remaining)))
            lowest = position & -position
            aligned = torch.where(position > 0, torch.frexp(lowest.double()).exponent - 1,
                                  torch.full_like(position, 62))
            fits = torch.frexp(remaining.clamp(min=1).double()).exponent - 1
            level = torch.minimum(aligned, fits).clamp(max=self.levels - 1)
            flat = self._offsets_tensor[level] + (position >> level)
            flat = torch.where(active, flat, torch.zeros_like(flat))  # identity once done
            result = self.table[flat] @ result
            position = torch.where(active, position + (torch.ones_like(level) << level), position)


class LazyRows(nn.Module):
    """N rows of class weights with their momentum, kept current lazily (see the module docstring)."""

    def __init__(self, rows: int, dim: int, momentum: float, weight_decay: float, init_std: float = 0.01):
        super().__init__()
        self.momentum, self.weight_decay = momentum, weight_decay
        self.register_buffer("weight", torch.randn(rows, dim) * init_std)
        self.register_buffer("velocity", torch.zeros(rows, dim))
        self.register_buffer("updated_to", torch.zeros(rows, dtype=torch.long))  # steps applied to each row
        self.products = DecayProducts(momentum, weight_decay)

    @property
    def steps(self) -> int:
        return len(self.products.lrs)

    def record_lr(self, lr: float) -> None:
        """The lr of the step about to run (call once per step, before `current`)."""
        self.products.append(lr)

    def current(self, rows: torch.Tensor, until: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, velocity) of `rows` as dense SGD has them before the step being run (or after
        `until` steps)."""
        until = self.steps - 1 if until is None else until
        # rows sampled in the same step share their last-update step: one product per distinct step
        # (a few dozen in a run: the batch plus the FIFO's K/B recent batches)
        starts, inverse = torch.unique(self.updated_to.index_select(0, rows).cpu(), return_inverse=True)
        matrices = self.products.products(starts, until).to(self.weight.device, self.weight.dtype)
        matrices = matrices.index_select(0, inverse.to(self.weight.device))
        weight, velocity = self.weight.index_select(0, rows), self.velocity.index_select(0, rows)
        a, b = matrices[:, 0, 0, None], matrices[:, 0, 1, None]
        c, d = matrices[:, 1, 0, None], matrices[:, 1, 1, None]
        return a * weight + b * velocity, c * weight + d * velocity

    @torch.no_grad()
    def step(self, rows: torch.Tensor, weight: torch.Tensor, velocity: torch.Tensor, grad: torch.Tensor) -> None:
        """torch.optim.SGD's update (momentum, weight decay, no dampening) for the sampled rows."""
        lr = self.products.lrs[-1]
        velocity = velocity * self.momentum + grad + self.weight_decay * weight
        self.weight.index_copy_(0, rows, weight - lr * velocity)
        self.velocity.index_copy_(0, rows, velocity)
        self.updated_to.index_fill_(0, rows, self.steps)

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row up to date (O(N): for tests and inspection, never in the training loop)."""
        rows = torch.arange(self.weight.shape[0], device=self.weight.device)
        for chunk in rows.split(1 << 16):
            weight, velocity = self.current(chunk, until=self.steps)
            self.weight.index_copy_(0, chunk, weight)
            self.velocity.index_copy_(0, chunk, velocity)
            self.updated_to.index_fill_(0, chunk, self.steps)

    def get_extra_state(self) -> torch.Tensor:  # the lr of every step so far: the decay products are rebuilt from it
        return torch.tensor(self.products.lrs, dtype=torch.float64)

    def set_extra_state(self, lrs: torch.Tensor) -> None:
        self.products = DecayProducts(self.momentum, self.weight_decay)
        for lr in lrs.tolist():
            self.products.append(lr)


# ---------------------------------------------------------------- the method
class PIC(OneBranch):
    branch = "encoder"
    name = "pic"
    uses_indices = True

    def __init__(self, backbone: nn.Module, feature_dim: int, instances: int, dim: int = 128, hidden: int = 2048,
                 temperature: float = 0.2, negatives: int = 65536, momentum: float = 0.9,
                 weight_decay: float = 1e-4, weight_lr_scale: float = 1.0, window: int = 0, stride: int = 0):
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict(backbone=backbone, head=mlp_head(feature_dim, hidden, dim)))
        self.temperature, self.weight_lr_scale = temperature, weight_lr_scale
        self.window, self.stride = window, stride
        self.classes = LazyRows(instances, dim, momentum, weight_decay)
        self.register_buffer("recent", torch.full((negatives,), -1, dtype=torch.long))  # FIFO of instance ids
        self.register_buffer("recent_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("schedule_position", torch.zeros(2, dtype=torch.long))  # (window, batch in window)
        self._pending, self._batches = None, None

    def make_batches(self, images, transform, batch_size, seed, rank=0, world_size=1, views=1) -> WindowBatches:
        if len(images) != self.classes.weight.shape[0]:
            raise ValueError(f"PIC was built for {self.classes.weight.shape[0]} instances, the data has {len(images)}")
        self._batches = WindowBatches(images, transform, batch_size, seed, rank, world_size, 1, self.window,
                                      self.stride)
        return self._batches

    def begin_step(self, step: int, lr: float) -> None:
        if self.classes.steps != step:
            raise RuntimeError(f"PIC's class weights were last updated at step {self.classes.steps}, "
                               f"the run is at step {step}: the checkpoint does not belong to this position")
        self.classes.record_lr(lr * self.weight_lr_scale)
        if self._batches is not None:
            self.schedule_position.copy_(torch.tensor(self._batches.position(step)))

    def forward(self, view1: torch.Tensor, view2=None, indices: torch.Tensor | None = None) -> torch.Tensor:
        z = self.run(view1).float()
        ids = indices.to(z.device)
        batch_ids = dist.gather_no_grad(ids)  # every rank samples the same classes
        recent = self.recent[self.recent >= 0]
        classes = torch.unique(torch.cat([batch_ids, recent]))  # sorted
        weight, velocity = self.classes.current(classes)
        weight = weight.detach().requires_grad_(True)
        loss = pic_loss(z, weight, torch.searchsorted(classes, ids), self.temperature)
        self._pending = (classes, weight, velocity, batch_ids)
        return loss

    @torch.no_grad()
    def after_backward(self) -> None:
        if self._pending is None:
            return
        classes, weight, velocity, batch_ids = self._pending
        self._pending = None
        grad = weight.grad
        if dist.is_distributed():  # replicas stay identical: the mean gradient, as DDP gives the encoder
            torch.distributed.all_reduce(grad)
            grad /= dist.world_size()
        self.classes.step(classes, weight.detach(), velocity, grad)
        self._enqueue(batch_ids)

    def _enqueue(self, ids: torch.Tensor) -> None:
        size = self.recent.shape[0]
        if size == 0:
            return
        ids = ids[-size:]
        slots = (self.recent_ptr + torch.arange(ids.shape[0], device=ids.device)) % size
        self.recent[slots] = ids
        self.recent_ptr.copy_((self.recent_ptr + ids.shape[0]) % size)


def build(config: dict, backbone, source) -> PIC:
    covered, stride = window_coverage(len(source), config["batch_size"], config["steps"], config["pic_window"],
                                      config["pic_stride"])
    if covered < 1.0 and dist.launch_rank() == 0:  # setup runs before the process group exists
        from .runfiles import say

        say(f"pic: {config['steps']} steps of {config['batch_size']} images visit only {covered:.0%} of the "
            f"{len(source)} images (the sliding window moves pic_stride images per window); for a run this short, "
            + (f"--set pic_stride={stride} makes the windows reach every image, but each is then revisited fewer "
               f"times (pic_window / pic_stride windows): a trade-off (on Fashion-MNIST at 1510 steps, the default "
               f"stride measured better)" if stride else
               "a larger --set pic_window (up to the number of images) lets the windows reach every image"))
    return PIC(backbone.module, backbone.num_features, len(source), dim=config["proj_dim"],
               hidden=config["proj_hidden"], temperature=config["temperature"], negatives=config["pic_negatives"],
               momentum=config["momentum"], weight_decay=config["weight_decay"],
               weight_lr_scale=config["pic_weight_lr_scale"], window=config["pic_window"],
               stride=config["pic_stride"])
