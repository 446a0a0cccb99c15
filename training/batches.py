"""Deterministic step -> batch mapping, so that resuming needs only the step counter.

Batch `s` holds the images at positions [b*B, (b+1)*B) of epoch e's permutation (e, b = divmod(s,
steps per epoch), last partial batch dropped); each image's augmentation is seeded by
(seed, step, position in the global batch). The data a step sees is therefore the same whether the
run was interrupted, how many loader workers there are, and how many ranks share the batch.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .data import ImageSet

_PRIME = 1_000_003


class StepBatches(Dataset):
    def __init__(self, images: ImageSet, transform, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 views: int = 2):
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        if batch_size > len(images):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} images of {images.spec}")
        self.images, self.transform, self.batch_size, self.seed = images, transform, batch_size, seed
        self.views = views  # 1: a single (raw) copy per image, augmented later on the device
        self.local = batch_size // world_size
        self.offset = rank * self.local
        self.steps_per_epoch = len(images) // batch_size
        self._epoch, self._order = None, None

    def __len__(self) -> int:  # steps are unbounded; the sampler says which ones
        return 1 << 62

    def positions(self, step: int) -> torch.Tensor:
        epoch, batch = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * _PRIME + epoch)
            self._epoch, self._order = epoch, torch.randperm(len(self.images), generator=generator)
        start = batch * self.batch_size + self.offset
        return self._order[start:start + self.local]

    def __getitem__(self, step: int):
        indices = self.positions(step)
        first, second = [], []
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # per-image ops are tiny: thread hand-offs cost more than they save
        try:
            with torch.random.fork_rng(devices=[]):  # never disturb the caller's RNG stream
                for slot, index in enumerate(indices.tolist()):
                    # the CPU generator only (torch.manual_seed would also touch CUDA's, 10x slower)
                    torch.default_generator.manual_seed(
                        ((self.seed * _PRIME + step) * 65_537 + self.offset + slot) % (1 << 63))
                    if getattr(self.transform, "takes_encoded", False):  # encoded_views: decode inside
                        made = self.transform(self.images.encoded(index), views=self.views)
                        first.append(made[0])
                        second.extend(made[1:])
                        continue
                    image = self.images.image(index)
                    first.append(self.transform(image))
                    if self.views == 2:
                        second.append(self.transform(image))
        finally:
            torch.set_num_threads(threads)
        return torch.stack(first), (torch.stack(second) if second else torch.empty(0)), indices


def step_loader(batches: StepBatches, start_step: int, total_steps: int, num_workers: int,
                pin_memory: bool = False) -> DataLoader:
    # its own generator: creating the iterator must not draw from the global RNG, or a resumed run (which
    # creates it after restoring the RNG state) would diverge from an uninterrupted one
    return DataLoader(batches, batch_size=None, sampler=range(start_step, total_steps), num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0),
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None)
