"""Self-training as in Noisy Student and "Rethinking Pre-training and Self-training" (Zoph et al. 2020).

    teacher   supervised on the `labels` labelled images, no noise; starts from `teacher` (a zoo
              checkpoint) or random init
    pseudo_k  the teacher's predictions on the unlabelled images: hard (argmax) or soft (softmax at
              `pseudo_temperature`); below `pseudo_threshold` confidence dropped; `class_balance`:
              the same count per class (the most confident kept, rare classes duplicated)
    student_k starts from `init` (random, a supervised or a self-supervised zoo checkpoint: the
              paper's comparison), noised: RandAugment (`randaugment_ops` ops), dropout before the
              head, stochastic depth, label smoothing on the labelled part; each batch holds
              labelled : pseudo-labelled images 1 : `unlabeled_ratio`, and
              loss = CE(labelled) + unlabeled_ratio * CE(pseudo)
    iterate   student_k teaches round k+1 (`iterations` rounds)
The final student's backbone exports as `selftrain-<domain>-<arch>`; its lineage names the teacher
and every intermediate student (with the sha256 of their backbones) and the initialisation.
The chain itself (training.runner.run_selftrain) runs each phase as an ordinary engine run: resume,
torchrun and checkpoints as usual.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import phases, runfiles
from .batches import _PRIME, StepBatches
from .branch import OneBranch
from .supervised import add_stochastic_depth, classifier, labelled_indices, source_targets, supervised_loss


# ---------------------------------------------------------------- pseudo-labels
def select_pseudo_labels(logits: torch.Tensor, temperature: float = 1.0, threshold: float = 0.0,
                         balance: bool = False, at_least: int = 1) -> dict:
    """Rows of `logits` to keep, with hard and soft targets. Keeps rows whose confidence (max softmax)
    reaches `threshold`, but at least the `at_least` most confident (a batch's worth: a young teacher
    may be sure of nothing). `balance`: every predicted class gets the same count, the kept mean per
    class; a class with more keeps its most confident, one with fewer repeats its rows (Noisy Student)."""
    probabilities = F.softmax(logits.double() / temperature, dim=1)
    confidence, predicted = probabilities.max(dim=1)
    order = torch.argsort(confidence, descending=True, stable=True)
    kept = order[confidence[order] >= threshold]
    if len(kept) < at_least:
        kept = order[:at_least]
    topped_up = len(kept) > int((confidence >= threshold).sum())
    if balance:
        classes = torch.unique(predicted[kept])
        per_class = max(1, len(kept) // len(classes))
        rows = []
        for label in classes.tolist():
            mine = kept[predicted[kept] == label]  # already in descending confidence
            repeats = -(-per_class // len(mine))
            rows.append(mine.repeat(repeats)[:per_class])
        kept = torch.cat(rows)
    return {"rows": kept, "hard": predicted[kept], "soft": probabilities[kept].float(),
            "confidence": confidence[kept].float(),
            "stats": {"candidates": int(len(logits)), "above_threshold": int((confidence >= threshold).sum()),
                      "kept": int(len(kept)), "topped_up": bool(topped_up),
                      "per_class": torch.bincount(predicted[kept], minlength=logits.shape[1]).tolist()}}


def unlabelled_indices(source, labelled: np.ndarray, count: int, seed: int) -> np.ndarray:
    rest = np.setdiff1d(np.arange(len(source)), labelled)
    if count and count < len(rest):
        rest = np.sort(np.random.default_rng(seed + 1).choice(rest, size=count, replace=False))
    return rest


def pseudo_label(teacher_checkpoint: Path, source, indices: np.ndarray, config: dict, at_least: int) -> dict:
    from .features import extract

    model, spec = phases.classifier_from(runfiles.load_checkpoint(teacher_checkpoint))
    logits = extract(model, source, spec, indices)
    chosen = select_pseudo_labels(logits, config["pseudo_temperature"], config["pseudo_threshold"],
                                  config["class_balance"], at_least)
    images = torch.as_tensor(indices, dtype=torch.long)[chosen["rows"]]
    targets = chosen["hard"] if config["pseudo"] == "hard" else chosen["soft"]
    return {"indices": images, "targets": targets, "confidence": chosen["confidence"],
            "stats": {k: torch.tensor(v) for k, v in chosen["stats"].items()}}


# ---------------------------------------------------------------- the student
class MixedBatches(StepBatches):
    """Each step: `labelled_share` images from an epoch permutation of the labelled indices, then the
    rest from one of the pseudo-labelled indices; under DDP each rank takes its slice of both parts."""

    def __init__(self, images, transform, batch_size, seed, rank, world_size, labelled, pseudo, labelled_share):
        super().__init__(images, transform, batch_size, seed, rank, world_size, views=1)
        shares = (labelled_share, batch_size - labelled_share)
        if any(share % world_size or share <= 0 for share in shares):
            raise ValueError(f"batch_size {batch_size} splits into {shares[0]} labelled + {shares[1]} pseudo-labelled "
                             f"images, each must be a positive multiple of the {world_size} processes")
        self.parts = [(torch.as_tensor(labelled, dtype=torch.long), shares[0]),
                      (torch.as_tensor(pseudo, dtype=torch.long), shares[1])]
        for pool, share in self.parts:
            if share > len(pool):
                raise ValueError(f"{share} images per batch from a pool of {len(pool)}: lower batch_size")
        self._orders, self.world, self.rank = {}, world_size, rank

    def positions(self, step: int) -> torch.Tensor:
        chosen = []
        for part, (pool, share) in enumerate(self.parts):
            epoch, batch = divmod(step, len(pool) // share)
            if self._orders.get(part, (None,))[0] != epoch:
                generator = torch.Generator().manual_seed((self.seed * _PRIME + epoch) * 4 + part)
                self._orders[part] = (epoch, pool[torch.randperm(len(pool), generator=generator)])
            local = share // self.world
            start = batch * share + self.rank * local
            chosen.append(self._orders[part][1][start:start + local])
        return torch.cat(chosen)


class Student(OneBranch):
    """A classifier trained on labelled + pseudo-labelled images with Noisy Student's noise."""
    name = "selftrain_student"
    uses_indices = True

    def __init__(self, backbone: nn.Module, feature_dim: int, labels: torch.Tensor, labelled: np.ndarray,
                 pseudo: dict, classes: int, ratio: int, label_smoothing: float, dropout: float,
                 randaugment: tuple[int, int]):
        super().__init__()
        self.model = classifier(backbone, feature_dim, classes, dropout)
        count = len(labels)
        kind = torch.zeros(count, dtype=torch.int8)
        kind[torch.as_tensor(labelled, dtype=torch.long)] = 1
        kind[pseudo["indices"]] = 2
        soft = pseudo["targets"].ndim == 2
        table = torch.zeros((count, classes) if soft else (count,), dtype=torch.float32 if soft else torch.long)
        table[pseudo["indices"]] = pseudo["targets"]
        # the data's labels and the hand-over's pseudo-labels: inputs, not state (kept out of checkpoints)
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("kind", kind, persistent=False)
        self.register_buffer("pseudo_targets", table, persistent=False)
        self.labelled, self.pseudo_indices = labelled, pseudo["indices"]
        self.ratio, self.label_smoothing, self.randaugment = ratio, label_smoothing, randaugment

    def make_batches(self, images, transform, batch_size, seed, rank=0, world_size=1, views=1) -> MixedBatches:
        from torchvision.transforms import v2

        ops, magnitude = self.randaugment
        noisy = v2.Compose([v2.RandAugment(num_ops=ops, magnitude=magnitude), transform]) if ops else transform
        labelled_share = batch_size // (1 + self.ratio)
        return MixedBatches(images, noisy, batch_size, seed, rank, world_size, self.labelled, self.pseudo_indices,
                            labelled_share)

    def forward(self, view1: torch.Tensor, view2=None, indices: torch.Tensor | None = None) -> torch.Tensor:
        logits = self.run(view1)
        indices = indices.to(self.kind.device)
        labelled = self.kind.index_select(0, indices) == 1
        loss = supervised_loss(logits[labelled], self.labels.index_select(0, indices[labelled]),
                               label_smoothing=self.label_smoothing)
        pseudo = ~labelled
        return loss + self.ratio * supervised_loss(logits[pseudo], self.pseudo_targets.index_select(0, indices[pseudo]))


def build_student(config: dict, backbone, source) -> Student:
    pseudo = torch.load(config["pseudo_file"], map_location="cpu", weights_only=True)
    labels = source_targets(source)
    add_stochastic_depth(backbone.module, config["drop_path"])
    return Student(backbone.module, backbone.num_features, labels, labelled_indices(source, config["labels"],
                                                                                     config["seed"]),
                   pseudo, int(labels.max()) + 1, config["unlabeled_ratio"], config["label_smoothing"],
                   config["dropout"], (config["randaugment_ops"], config["randaugment_magnitude"]))


# ---------------------------------------------------------------- the chain
def teacher_config(config: dict) -> dict:
    return {**config, "method": "supervised", "init": config["teacher"],
            "steps": config["teacher_steps"] or config["steps"], "label_smoothing": 0.0, "dropout": 0.0,
            "drop_path": 0.0, "schedule": "cosine", "head_lr_scale": 1.0}


def student_config(config: dict, pseudo_file: Path) -> dict:
    return {**config, "method": "selftrain_student", "pseudo_file": str(pseudo_file),
            "augment_device": False}  # RandAugment runs in the loader
