"""Evaluation protocols; each returns a JSON-ready record (protocol, data, split, metric, value, command).

- kNN monitor (k=200, t=0.1): cosine similarity on frozen features, votes weighted exp(sim/t).
- Linear separability as in the HPT study: frozen backbone in eval mode, features cached once;
  a linear classifier trained with SGD (momentum 0.9, wd 0) for each lr of a grid, lr x0.1 at
  1/3 and 2/3 of the iterations, validation every `val_every` iterations; the test score at the
  best validation point is reported (top-1, or mean AUROC for multi-label tasks).
- Semi-supervised: `labels` images (every class at least once), the whole model fine-tuned with
  the head lr x100, wd 0, step schedule; lr chosen on validation, test reported.
"""
from __future__ import annotations

import math
import shlex
import sys

import numpy as np
import torch
import torch.nn.functional as F

from .data import ImageSet
from .features import extract, subset
from .views import InputSpec, view_transform


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [sys.executable.rsplit("/", 1)[-1], "-m", "training", *sys.argv[1:]]) \
        if sys.argv and sys.argv[0].endswith(("training/__main__.py", "__main__.py")) else \
        " ".join(shlex.quote(a) for a in sys.argv)


def record(protocol: str, data: str, split: str, metric: str, value: float, **extra) -> dict:
    return {"protocol": protocol, "data": data, "split": split, "metric": metric, "value": float(value),
            "command": extra.pop("command", None) or command_line(), **extra}


# ---------------------------------------------------------------- kNN
def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 200, t: float = 0.1,
                chunk: int = 1024) -> torch.Tensor:
    train_features = F.normalize(train_features, dim=1)
    test_features = F.normalize(test_features, dim=1)
    k = min(k, train_features.shape[0])
    predictions = []
    for start in range(0, test_features.shape[0], chunk):
        similarity = test_features[start:start + chunk] @ train_features.t()
        weights, neighbours = similarity.topk(k, dim=1)
        votes = torch.zeros(similarity.shape[0], num_classes)
        votes.scatter_add_(1, train_labels[neighbours], (weights / t).exp())
        predictions.append(votes.argmax(dim=1))
    return torch.cat(predictions)


def knn_accuracy(backbone, train: ImageSet, test: ImageSet, spec: InputSpec, k: int = 200, t: float = 0.1,
                 train_images: int | None = None, test_images: int | None = None, device="cpu") -> float:
    train_index, test_index = subset(train_images, len(train)), subset(test_images, len(test), seed=1)
    train_labels = torch.from_numpy(train.labels()[train_index])
    test_labels = torch.from_numpy(test.labels()[test_index])
    features = extract(backbone, train, spec, train_index, device=device)
    predicted = knn_predict(features, train_labels, extract(backbone, test, spec, test_index, device=device),
                            train.num_classes, k, t)
    return float((predicted == test_labels).float().mean())


# ---------------------------------------------------------------- metrics
def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def mean_auroc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over labels of the ROC AUC (Mann-Whitney U with tied ranks averaged); labels with a single
    class present are skipped."""
    values = []
    for column in range(targets.shape[1]):
        y, s = targets[:, column].numpy() > 0.5, scores[:, column].double().numpy()
        positives, negatives = y.sum(), (~y).sum()
        if positives == 0 or negatives == 0:
            continue
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s))
        sorted_scores = s[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
        ends = np.r_[starts[1:], len(s)]
        for a, b in zip(starts, ends):
            ranks[order[a:b]] = (a + b + 1) / 2.0  # average 1-based rank of ties
        values.append((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))
    return float(np.mean(values)) if values else float("nan")


def score(logits, labels, multi_label: bool) -> float:
    if multi_label:
        return mean_auroc(torch.sigmoid(logits.float()), labels)
    if not torch.isfinite(logits).all():
        return 0.0
    return top1(logits, labels)


# ---------------------------------------------------------------- linear separability
def linear_probe(train_x, train_y, val_x, val_y, test_x, test_y, num_classes: int, multi_label: bool = False,
                 lrs=(0.3, 3.0, 30.0), iterations: int = 5000, batch_size: int = 512, val_every: int = 100,
                 seed: int = 0) -> dict:
    """Train a linear classifier on cached features per lr; return the best-validation result."""
    results = []
    for lr in lrs:
        generator = torch.Generator().manual_seed(seed)
        classifier = torch.nn.Linear(train_x.shape[1], num_classes)
        torch.nn.init.zeros_(classifier.weight), torch.nn.init.zeros_(classifier.bias)
        optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=0.0)
        milestones = [round(iterations * 1651 / 5000), round(iterations * 3333 / 5000)]  # the study's 1651 / 3333
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        loss_fn = F.binary_cross_entropy_with_logits if multi_label else F.cross_entropy
        best = {"lr": lr, "val": -math.inf, "test": None, "iteration": 0}
        for iteration in range(1, iterations + 1):
            batch = torch.randint(0, train_x.shape[0], (min(batch_size, train_x.shape[0]),), generator=generator)
            loss = loss_fn(classifier(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if iteration % val_every == 0 or iteration == iterations:
                with torch.no_grad():
                    val = score(classifier(val_x), val_y, multi_label)
                if val > best["val"]:
                    with torch.no_grad():
                        best.update(val=val, test=score(classifier(test_x), test_y, multi_label), iteration=iteration)
        results.append(best)
    chosen = max(results, key=lambda r: r["val"])
    return {"value": chosen["test"], "val": chosen["val"], "lr": chosen["lr"], "iteration": chosen["iteration"],
            "grid": results}


def linear_eval(backbone, train: ImageSet, val: ImageSet, test: ImageSet, spec: InputSpec, data: str,
                train_images: int | None = None, eval_images: int | None = None, device="cpu", **probe) -> dict:
    """The HPT linear-separability protocol on one data set; returns an evaluation record. `train_images` /
    `eval_images` subsample (fixed seeds) for CPU budgets; None uses every image."""
    index = subset(train_images, len(train))
    val_index, test_index = subset(eval_images, len(val), 2), subset(eval_images, len(test), 3)
    train_x = extract(backbone, train, spec, index, device=device)
    val_x = extract(backbone, val, spec, val_index, device=device)
    test_x = extract(backbone, test, spec, test_index, device=device)
    multi = train.multi_label
    to_y = (lambda s, i: torch.from_numpy(s.labels()[i]))
    result = linear_probe(train_x, to_y(train, index), val_x, to_y(val, val_index), test_x, to_y(test, test_index),
                          train.num_classes, multi, **probe)
    return record("linear", data, "test", "mean_auroc" if multi else "top1", result["value"],
                  val_score=result["val"], lr=result["lr"], iteration=result["iteration"],
                  train_images=len(index), test_images=len(test_index), grid=[{k: r[k] for k in ("lr", "val", "test")} for r in result["grid"]])


# ---------------------------------------------------------------- semi-supervised fine-tuning
def labelled_subset(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` random indices with every class present at least once (one per class first)."""
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    if count < len(classes):
        raise ValueError(f"{count} labels cannot cover {len(classes)} classes")
    chosen = [rng.choice(np.flatnonzero(labels == c)) for c in classes]
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    chosen += list(rng.choice(rest, size=count - len(classes), replace=False))
    return np.sort(np.asarray(chosen))


def finetune_eval(make_backbone, num_features: int, train: ImageSet, val: ImageSet, test: ImageSet,
                  spec: InputSpec, data: str, labels: int = 1000, lrs=(0.01, 0.001), iterations: int = 2500,
                  batch_size: int = 512, head_lr_scale: float = 100.0, eval_images: int | None = None,
                  seed: int = 0, device="cpu") -> dict:
    """Fine-tune the whole model on `labels` labelled images per lr; pick the lr on validation."""
    if train.multi_label:
        raise NotImplementedError("semi-supervised protocol implemented for single-label tasks")
    chosen = labelled_subset(train.labels(), labels, seed)
    all_labels = torch.from_numpy(train.labels())
    augment = view_transform(spec, "crop_flip")
    val_index, test_index = subset(eval_images, len(val), 2), subset(eval_images, len(test), 3)
    results = []
    for lr in lrs:
        torch.manual_seed(seed)
        backbone = make_backbone().to(device).train()
        head = torch.nn.Linear(num_features, train.num_classes).to(device)
        optimizer = torch.optim.SGD([{"params": backbone.parameters(), "lr": lr},
                                     {"params": head.parameters(), "lr": lr * head_lr_scale}],
                                    momentum=0.9, weight_decay=0.0)
        milestones = [round(iterations / 3), round(2 * iterations / 3)]  # the study's 833 / 1667 of 2500
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
        generator = torch.Generator().manual_seed(seed)
        for _ in range(iterations):
            batch = chosen[torch.randint(0, len(chosen), (min(batch_size, len(chosen)),), generator=generator).numpy()]
            images = torch.stack([augment(train.image(int(i))) for i in batch]).to(device)
            loss = F.cross_entropy(head(backbone(images)), all_labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model = torch.nn.Sequential(backbone, head)
        val_logits = extract(model, val, spec, val_index, device=device)
        test_logits = extract(model, test, spec, test_index, device=device)
        results.append({"lr": lr, "val": score(val_logits, torch.from_numpy(val.labels()[val_index]), False),
                        "test": score(test_logits, torch.from_numpy(test.labels()[test_index]), False)})
    best = max(results, key=lambda r: r["val"])
    return record("semi_supervised", data, "test", "top1", best["test"], labels=labels, lr=best["lr"],
                  val_score=best["val"], iterations=iterations, batch_size=batch_size, grid=results)
