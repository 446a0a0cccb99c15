"""Evaluation protocols; each returns a JSON-ready record (protocol, data, split, metric, value, command).

- kNN monitor (k=200, t=0.1): cosine similarity on frozen features, votes weighted exp(sim/t). Multi-label:
  each label's score is the weighted fraction of the k neighbours that carry it (a similarity-weighted
  kNN label posterior), scored by mean AUROC like the other protocols.
- Linear separability as in the HPT study: frozen backbone in eval mode, features cached once;
  a linear classifier trained with SGD (momentum 0.9, wd 0) for each lr of a grid, lr x0.1 at
  1/3 and 2/3 of the iterations, validation every `val_every` iterations; the test score at the
  best validation point is reported (top-1, or mean AUROC for multi-label tasks).
- Semi-supervised: `labels` images (every class -- or, multi-label, every label -- at least once where the
  training split has it), the whole model fine-tuned with the head lr x100, wd 0, lr x0.1 at 1/3 and 2/3
  of 2,500 iterations (cross-entropy, or BCE for multi-label); validated every `val_every` iterations,
  test reported at the best validation point; lr chosen on validation. `labels=None` is the study's
  full fine-tune protocol (all training labels, same schedule).
- Mean AUROC as the study computed it (OpenSelfSup's auroc(): sklearn's roc_auc_score per label, a label
  with one class in the split scores 0 and still counts in the mean). Records also carry the mean over
  defined labels only and how many labels were undefined, so a small split cannot mislead.
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
def knn_scores(train_features, train_labels, test_features, num_classes: int, k: int = 200, t: float = 0.1,
               chunk: int = 1024) -> torch.Tensor:
    """Per-class scores: similarity-weighted votes (weights exp(sim/t)) of the k nearest training images,
    normalised by the total weight. train_labels: int64 [N] (single-label) or 0/1 float [N, C] (multi-label:
    a label's score is the weighted fraction of neighbours carrying it)."""
    train_features = F.normalize(train_features, dim=1)
    test_features = F.normalize(test_features, dim=1)
    k = min(k, train_features.shape[0])
    out = []
    for start in range(0, test_features.shape[0], chunk):
        similarity = test_features[start:start + chunk] @ train_features.t()
        weights, neighbours = similarity.topk(k, dim=1)
        weights = ((weights - weights[:, :1]) / t).exp()  # shifted by the row max: same ratios, no overflow
        if train_labels.dim() == 2:
            votes = torch.einsum("qk,qkc->qc", weights, train_labels[neighbours].float())
        else:
            votes = torch.zeros(similarity.shape[0], num_classes)
            votes.scatter_add_(1, train_labels[neighbours], weights)
        out.append(votes / weights.sum(1, keepdim=True))
    return torch.cat(out)


def knn_predict(train_features, train_labels, test_features, num_classes: int, k: int = 200, t: float = 0.1,
                chunk: int = 1024) -> torch.Tensor:
    return knn_scores(train_features, train_labels, test_features, num_classes, k, t, chunk).argmax(dim=1)


def knn_evaluate(backbone, train: ImageSet, test: ImageSet, spec: InputSpec, k: int = 200, t: float = 0.1,
                 train_images: int | None = None, test_images: int | None = None, device="cpu") -> dict:
    """kNN with the data's metric: {"metric": top1 | mean_auroc, "value": ..., plus AUROC details}."""
    train_index, test_index = subset(train_images, len(train)), subset(test_images, len(test), seed=1)
    train_labels = torch.from_numpy(train.labels()[train_index])
    test_labels = torch.from_numpy(test.labels()[test_index])
    features = extract(backbone, train, spec, train_index, device=device)
    scores = knn_scores(features, train_labels, extract(backbone, test, spec, test_index, device=device),
                        train.num_classes, k, t)
    if train.multi_label:
        return {"metric": "mean_auroc", **auroc_summary(scores, test_labels)}
    return {"metric": "top1", "value": float((scores.argmax(1) == test_labels).float().mean())}


def knn_accuracy(backbone, train: ImageSet, test: ImageSet, spec: InputSpec, k: int = 200, t: float = 0.1,
                 train_images: int | None = None, test_images: int | None = None, device="cpu") -> float:
    """The kNN score (top-1, or mean AUROC for multi-label data) as one number."""
    return knn_evaluate(backbone, train, test, spec, k, t, train_images, test_images, device)["value"]


# ---------------------------------------------------------------- metrics
def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean())


def mean_auroc(scores: torch.Tensor, targets: torch.Tensor, one_class: str = "skip") -> float:
    """Mean over labels of the ROC AUC (Mann-Whitney U with tied ranks averaged). A label with a single
    class present: one_class="skip" leaves it out; "study" scores it 0 and keeps it in the mean, as the HPT
    study's evaluation did (OpenSelfSup auroc(): roc_auc_score raises, the entry stays 0)."""
    if one_class not in ("skip", "study"):
        raise ValueError(f"one_class must be 'skip' or 'study', not {one_class!r}")
    values = []
    for column in range(targets.shape[1]):
        y, s = targets[:, column].numpy() > 0.5, scores[:, column].double().numpy()
        positives, negatives = y.sum(), (~y).sum()
        if positives == 0 or negatives == 0:
            if one_class == "study":
                values.append(0.0)
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


def auroc_summary(scores: torch.Tensor, targets: torch.Tensor) -> dict:
    """The study's mean AUROC as `value`, with the defined-labels-only mean and the undefined count."""
    targets = targets.float()
    undefined = int(((targets > 0.5).all(0) | (targets <= 0.5).all(0)).sum())
    return {"value": mean_auroc(scores, targets, one_class="study"),
            "mean_auroc_defined_labels": mean_auroc(scores, targets, one_class="skip"),
            "one_class_labels": undefined, "one_class_rule": "scored 0 and averaged in (the HPT study's rule)"}


def score(logits, labels, multi_label: bool) -> float:
    if multi_label:
        return mean_auroc(torch.sigmoid(logits.float()), labels, one_class="study")
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
                        logits = classifier(test_x)
                    best.update(val=val, test=score(logits, test_y, multi_label), iteration=iteration)
                    if multi_label:
                        best["test_auroc"] = auroc_summary(torch.sigmoid(logits.float()), test_y)
        results.append(best)
    chosen = max(results, key=lambda r: r["val"])
    return {"value": chosen["test"], "val": chosen["val"], "lr": chosen["lr"], "iteration": chosen["iteration"],
            "grid": results, **({"test_auroc": chosen["test_auroc"]} if "test_auroc" in chosen else {})}


def linear_eval(backbone, train: ImageSet, val: ImageSet, test: ImageSet, spec: InputSpec, data: str,
                train_images: int | None = None, eval_images: int | None = None, device="cpu", draw: int = 0,
                **probe) -> dict:
    """The HPT linear-separability protocol on one data set; returns an evaluation record. `train_images` /
    `eval_images` subsample (fixed seeds) for CPU budgets; None uses every image. `draw` picks another fixed
    subsample (0: the protocol's own): the same protocol on other images, to measure how much its result
    depends on which images it drew (a retest)."""
    index = subset(train_images, len(train), 10 * draw)
    val_index, test_index = subset(eval_images, len(val), 2 + 10 * draw), subset(eval_images, len(test), 3 + 10 * draw)
    train_x = extract(backbone, train, spec, index, device=device)
    val_x = extract(backbone, val, spec, val_index, device=device)
    test_x = extract(backbone, test, spec, test_index, device=device)
    multi = train.multi_label
    to_y = (lambda s, i: torch.from_numpy(s.labels()[i]))
    result = linear_probe(train_x, to_y(train, index), val_x, to_y(val, val_index), test_x, to_y(test, test_index),
                          train.num_classes, multi, **probe)
    extra = {}
    if multi:  # re-score the chosen classifier's test logits for the AUROC details
        extra = {k: v for k, v in result.get("test_auroc", {}).items() if k != "value"}
    return record("linear", data, "test", "mean_auroc" if multi else "top1", result["value"], **extra,
                  val_score=result["val"], lr=result["lr"], iteration=result["iteration"],
                  train_images=len(index), test_images=len(test_index), grid=[{k: r[k] for k in ("lr", "val", "test")} for r in result["grid"]],
                  **({"draw": draw} if draw else {}))


# ---------------------------------------------------------------- semi-supervised fine-tuning
def labelled_subset(labels: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`count` random indices with every class present at least once (one per class first). Multi-label
    ([N, C] 0/1): every label that occurs in the split is covered first (rarest label first, one random
    image carrying it unless an earlier pick already does), then the rest drawn at random."""
    rng = np.random.default_rng(seed)
    if count >= len(labels):
        return np.arange(len(labels))
    if labels.ndim == 2:
        positive = labels > 0.5
        chosen: list[int] = []
        covered = np.zeros(labels.shape[1], dtype=bool)
        for column in np.argsort(positive.sum(0), kind="stable"):
            carriers = np.flatnonzero(positive[:, column])
            if covered[column] or len(carriers) == 0:
                continue
            pick = int(rng.choice(carriers))
            chosen.append(pick)
            covered |= positive[pick]
        chosen = chosen[:count]  # fewer images than labels present: the rarest labels are covered first
    else:
        classes = np.unique(labels)
        if count < len(classes):
            raise ValueError(f"{count} labels cannot cover {len(classes)} classes")
        chosen = [int(rng.choice(np.flatnonzero(labels == c))) for c in classes]
    rest = np.setdiff1d(np.arange(len(labels)), chosen)
    chosen += list(rng.choice(rest, size=count - len(chosen), replace=False))
    return np.sort(np.asarray(chosen))


def finetune_eval(make_backbone, num_features: int, train: ImageSet, val: ImageSet, test: ImageSet,
                  spec: InputSpec, data: str, labels: int | None = 1000, lrs=(0.01, 0.001), iterations: int = 2500,
                  batch_size: int = 512, head_lr_scale: float = 100.0, eval_images: int | None = None,
                  seed: int = 0, device="cpu", val_every: int = 100) -> dict:
    """Fine-tune the whole model per lr on `labels` labelled images (None: every training image, the
    study's full fine-tune); validate every `val_every` iterations, report the test score at the best
    validation point of the lr with the best validation score."""
    multi = train.multi_label
    all_labels = train.labels()
    chosen = labelled_subset(all_labels, labels, seed) if labels else np.arange(len(train))
    all_labels = torch.from_numpy(all_labels)
    loss_fn = F.binary_cross_entropy_with_logits if multi else F.cross_entropy
    augment = view_transform(spec, "crop_flip")
    val_index, test_index = subset(eval_images, len(val), 2), subset(eval_images, len(test), 3)
    val_y, test_y = torch.from_numpy(val.labels()[val_index]), torch.from_numpy(test.labels()[test_index])
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
        model = torch.nn.Sequential(backbone, head)
        best = {"lr": lr, "val": -math.inf, "test": None, "iteration": 0}
        for iteration in range(1, iterations + 1):
            batch = chosen[torch.randint(0, len(chosen), (min(batch_size, len(chosen)),), generator=generator).numpy()]
            images = torch.stack([augment(train.image(int(i))) for i in batch]).to(device)
            loss = loss_fn(head(backbone(images)), all_labels[batch].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if iteration % val_every == 0 or iteration == iterations:
                val_score = score(extract(model, val, spec, val_index, device=device), val_y, multi)
                if val_score > best["val"]:
                    test_logits = extract(model, test, spec, test_index, device=device)
                    best.update(val=val_score, test=score(test_logits, test_y, multi), iteration=iteration)
                    if multi:
                        best["auroc"] = auroc_summary(torch.sigmoid(test_logits.float()), test_y)
                model.train()
        results.append(best)
    chosen_lr = max(results, key=lambda r: r["val"])
    details = {k: v for k, v in chosen_lr.get("auroc", {}).items() if k != "value"}
    protocol = "semi_supervised" if labels else "finetune"
    return record(protocol, data, "test", "mean_auroc" if multi else "top1", chosen_lr["test"], **details,
                  labels=int(len(chosen)), lr=chosen_lr["lr"], val_score=chosen_lr["val"],
                  iteration=chosen_lr["iteration"], iterations=iterations, batch_size=batch_size,
                  grid=[{k: r[k] for k in ("lr", "val", "test", "iteration")} for r in results])
