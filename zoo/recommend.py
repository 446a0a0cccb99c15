"""Which checkpoint suits my data? A quick frozen-feature probe on a small labelled sample.

    ranking = zoo.recommend("my_images/", budget_s=60)     # <dir>/<class>/<image> (or <dir>/train/<class>/...)
    ranking = zoo.recommend((images, labels), candidates=["sup-imagenet-mnv2", "exported/hpt-x/"])
    print(ranking)                                         # table, timings and the caveat

Every candidate that can serve the data (its input channels match, or the data is gray and the
model RGB: gray is replicated) embeds the same stratified sample in eval mode; the score is the
leave-one-out accuracy of a closed-form ridge classifier on standardised features (kernel form,
one eigendecomposition for the whole regularisation grid). No SGD, no lr grid: the probe is
deterministic and does not depend on the features' scale. BN variants of a published base are
candidates of their own (``base-<domain>-<arch>``).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ZooError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
RIDGE_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # x the mean eigenvalue of the sample's kernel
PILOT_IMAGES = 32
CAVEAT = ("caveat: a quick frozen-feature probe on a small sample ranks linear separability on this sample; "
          "scores closer than ~2 standard errors are a tie, and it does not predict which checkpoint "
          "fine-tunes best. Confirm the top candidates with the full linear probe or a fine-tune.")


class RecommendError(ZooError, ValueError):
    """Data or candidates recommend cannot use; the message says how to fix it."""


@dataclass
class Ranking:
    rows: list[dict]  # scored candidates, best first
    skipped: list[dict]  # {"name", "reason"}
    images: int
    classes: int
    seconds: float
    budget_s: float | None
    caveat: str = CAVEAT
    notes: list[str] = field(default_factory=list)

    @property
    def best(self) -> str | None:
        return self.rows[0]["name"] if self.rows else None

    def as_dict(self) -> dict:
        return {"rows": self.rows, "skipped": self.skipped, "images": self.images, "classes": self.classes,
                "seconds": self.seconds, "budget_s": self.budget_s, "caveat": self.caveat, "notes": self.notes}

    def __str__(self) -> str:
        width = max([len("candidate")] + [len(r["name"]) for r in self.rows + self.skipped])
        lines = [f"recommend: {len(self.rows)} candidates probed on {self.images} images, {self.classes} classes, "
                 f"{self.seconds:.1f} s" + (f" (budget {self.budget_s:g} s)" if self.budget_s else ""),
                 f"{'rank':>4}  {'candidate':{width}s}  {'score':>6}  {'+-se':>5}  {'size':>4}  {'load s':>6}  "
                 f"{'embed s':>7}  {'probe s':>7}"]
        for rank, row in enumerate(self.rows, 1):
            lines.append(f"{rank:>4}  {row['name']:{width}s}  {row['score']:6.3f}  {row['stderr']:5.3f}  "
                         f"{row['image_size']:>4}  {row['load_s']:6.2f}  {row['embed_s']:7.2f}  {row['probe_s']:7.3f}")
        for row in self.skipped:
            lines.append(f"{'-':>4}  {row['name']:{width}s}  skipped: {row['reason']}")
        lines += self.notes
        lines.append(self.caveat)
        return "\n".join(lines)


# ------------------------------------------------------------------ data
def _image_files(folder: Path) -> list[Path]:
    """Regular image files directly in `folder` (symlinks are not followed: a sample stays inside the tree)."""
    with os.scandir(folder) as entries:
        return sorted(Path(e.path) for e in entries
                      if e.is_file(follow_symlinks=False) and Path(e.name).suffix.lower() in IMAGE_SUFFIXES)


def read_folder(root: str | os.PathLike, limit_per_class: int | None = None, seed: int = 0):
    """<root>/<class>/<image> (or <root>/train/<class>/<image>) -> (list of uint8 [C,H,W], labels, classes)."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise RecommendError(f"{root} is not a folder; pass a folder of class subfolders (<dir>/<class>/<image>) "
                             f"or (images, labels) arrays")
    if (root / "train").is_dir() and not (root / "train").is_symlink():
        root = root / "train"
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False) and not e.name.startswith("."))
    if len(classes) < 2:
        raise RecommendError(f"{root} needs at least two class subfolders (<dir>/<class>/<image>); found {classes}")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, name in enumerate(classes):
        files = _image_files(root / name)
        if limit_per_class is not None and len(files) > limit_per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), limit_per_class, replace=False))]
        for path in files:
            with Image.open(path) as image:
                image = image.convert("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
                array = np.array(image)
            images.append(torch.from_numpy(array[:, :, None] if array.ndim == 2 else array).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise RecommendError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders of {root}")
    return images, np.asarray(labels), classes


def _as_image_list(images) -> list[torch.Tensor]:
    """Arrays [N,H,W], [N,H,W,C] or [N,C,H,W] (uint8, or float in [0, 1]) or a list of [C,H,W] -> uint8 [C,H,W] list."""
    if isinstance(images, (list, tuple)):
        return [_as_image_list(torch.as_tensor(np.asarray(x))[None])[0] for x in images]
    batch = torch.as_tensor(np.asarray(images))
    if batch.dtype.is_floating_point:
        batch = (batch.clamp(0, 1) * 255).round().to(torch.uint8)
    if batch.dtype != torch.uint8:
        raise RecommendError(f"images must be uint8 or float in [0, 1], not {batch.dtype}")
    if batch.ndim == 3:
        batch = batch[:, None]
    elif batch.ndim == 4 and batch.shape[1] not in (1, 3) and batch.shape[-1] in (1, 3):
        batch = batch.permute(0, 3, 1, 2)
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        raise RecommendError(f"images must be [N,H,W], [N,H,W,C] or [N,C,H,W] with 1 or 3 channels, "
                             f"not {tuple(batch.shape)}")
    return list(batch)


def stratified_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """All indices, classes interleaved round-robin in a seeded random order: any prefix is balanced."""
    rng = np.random.default_rng(seed)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    order = []
    for position in range(max(len(p) for p in per_class)):
        order += [int(p[position]) for p in per_class if position < len(p)]
    return np.asarray(order)


# ------------------------------------------------------------------ features and probe
def preprocess(images: list[torch.Tensor], cfg: dict, image_size: int | None, crop_pct: float | None) -> torch.Tensor:
    """uint8 [C,H,W] images -> the candidate's input: channels, resize + center crop, mean/std."""
    channels = int(cfg["input_size"][0])
    size = int(image_size or cfg["input_size"][-1])
    crop = float(crop_pct or cfg.get("crop_pct", 1.0))
    mode = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
    out = []
    for image in images:
        x = image.float().div(255)[None]
        if x.shape[1] == 1 and channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        short = int(round(size / crop))
        height, width = x.shape[-2:]
        scale = short / min(height, width)
        x = F.interpolate(x, size=(max(short, round(height * scale)), max(short, round(width * scale))), mode=mode,
                          antialias=True, align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        out.append(x[..., top:top + size, left:left + size])
    batch = torch.cat(out)
    mean = torch.tensor(cfg["mean"], dtype=batch.dtype).view(1, -1, 1, 1)[:, :channels]
    std = torch.tensor(cfg["std"], dtype=batch.dtype).view(1, -1, 1, 1)[:, :channels]
    return (batch - mean) / std


@torch.no_grad()
def embed(model: torch.nn.Module, inputs: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    return torch.cat([model(inputs[i:i + batch_size]).float().flatten(1) for i in range(0, len(inputs), batch_size)])


def ridge_loo_accuracy(features: torch.Tensor, labels: np.ndarray, grid=RIDGE_GRID) -> tuple[float, float]:
    """Leave-one-out accuracy of one-vs-rest ridge regression (unpenalised intercept) on standardised
    features, best over the grid. Returns (accuracy, lam).

    With centred features Zc, K = Zc Zc^T / d = U diag(s) U^T, the hat matrix is H = 11^T/n + K (K + lam I)^-1
    and the LOO prediction of row i is (Yhat_i - H_ii Y_i) / (1 - H_ii), exact for ridge with an intercept
    (centring is a reparametrisation of the intercept); one eigendecomposition serves every lam. The 1/n
    term matters: without it, an interpolating fit (d >> n) leaks each row's own label into its LOO
    prediction through the centring and scores even random features near 100%."""
    x = features.double()
    n = x.shape[0]
    x = x - x.mean(0)
    spread = x.std(0)
    z = x[:, spread > 1e-8] / spread[spread > 1e-8]  # dead units carry nothing; dividing by 0 would poison
    y_index = torch.as_tensor(labels, dtype=torch.long)
    y = F.one_hot(y_index, int(y_index.max()) + 1).double()
    mean_y = y.mean(0)
    if z.shape[1] == 0:  # constant features: the intercept alone
        loo = (n * mean_y - y) / (n - 1)
        return float((loo.argmax(1) == y_index).double().mean()), float("nan")
    kernel = z @ z.t() / z.shape[1]
    eigenvalues, vectors = torch.linalg.eigh(kernel)
    eigenvalues = eigenvalues.clamp_min(0)
    projected = vectors.t() @ (y - mean_y)
    best = (-1.0, float("nan"))
    for factor in grid:
        lam = factor * float(eigenvalues.mean())
        shrink = eigenvalues / (eigenvalues + lam)
        fitted = mean_y + vectors @ (shrink[:, None] * projected)
        leverage = ((vectors.pow(2) * shrink).sum(1) + 1.0 / n).clamp(max=1 - 1e-9)
        loo = (fitted - leverage[:, None] * y) / (1 - leverage[:, None])
        accuracy = float((loo.argmax(1) == y_index).double().mean())
        if accuracy > best[0]:
            best = (accuracy, lam)
    return best


# ------------------------------------------------------------------ candidates
def _channels_of(details: dict) -> int:
    return int(details.get("pretrained_cfg", {}).get("input_size", (3,))[0])


def default_candidates(data_channels: int, domain: str | None = None, arch: str | None = None) -> list[str]:
    """Published checkpoints (and BN variants of published bases) that can serve data with these channels."""
    from .catalog import list_models
    from .loader import info

    names = []
    for name in list_models():
        details = info(name)
        variant = details.get("bn_variant")
        if variant and domain and variant != domain:
            continue
        if arch and arch not in (details.get("arch"), details.get("timm_arch")):
            continue
        if _serves(_channels_of(details), data_channels):
            names.append(name)
    return names


def _serves(model_channels: int, data_channels: int) -> bool:
    return model_channels == data_channels or (data_channels == 1 and model_channels == 3)


def recommend(data, candidates=None, budget_s: float | None = 60.0, *, sample: int = 500, image_size: int | None = None,
              crop_pct: float | None = None, domain: str | None = None, arch: str | None = None,
              seed: int = 0) -> Ranking:
    """Rank checkpoints for `data` by a quick frozen-feature probe; see the module docstring.

    data: a folder (<dir>/<class>/<image>) or (images, labels). candidates: names or checkpoint folders
    (default: published ones that can serve the data; `domain` keeps only that domain's BN variants,
    `arch` one architecture family). budget_s: the whole call's time; the sample shrinks (never below
    10 per class) so that every candidate fits, estimated from the first candidate's speed.
    image_size / crop_pct: override every candidate's own preprocessing (e.g. 64 for 28 px data).
    """
    from .loader import info, load

    start = time.perf_counter()
    if isinstance(data, (str, os.PathLike)):
        images, labels, _ = read_folder(data, limit_per_class=None, seed=seed)
    else:
        try:
            images, labels = data
        except (TypeError, ValueError):
            raise RecommendError("data must be a folder or a pair (images, labels)") from None
        images, labels = _as_image_list(images), np.asarray(labels)
    if len(images) != len(labels):
        raise RecommendError(f"{len(images)} images but {len(labels)} labels")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise RecommendError("labels must be one non-negative integer class per image")
    classes = int(len(np.unique(labels)))
    if classes < 2:
        raise RecommendError("recommend needs at least two classes to probe")
    labels = np.unique(labels, return_inverse=True)[1]
    order = stratified_order(labels, seed)[:sample]
    data_channels = int(images[order[0]].shape[0])
    names = list(candidates) if candidates is not None else default_candidates(data_channels, domain, arch)
    if not names:
        raise RecommendError(f"no candidate checkpoint serves {data_channels}-channel data"
                             + (f" of arch {arch}" if arch else "") + "; pass candidates=[...] (names or folders)")
    rows, skipped, notes = [], [], []
    minimum = min(len(order), 10 * classes)
    calibrated = False  # the sample size is fixed once, on the first candidate that loads
    for name in names:
        label = str(name)
        if budget_s and rows and time.perf_counter() - start > 1.5 * budget_s:
            skipped.append({"name": label, "reason": f"over budget ({budget_s:g} s)"})
            continue
        try:
            details = info(name)
            if not _serves(_channels_of(details), data_channels):
                skipped.append({"name": label, "reason": f"expects {_channels_of(details)}-channel input, "
                                                         f"the data has {data_channels}"})
                continue
            began = time.perf_counter()
            model = load(name)
        except ZooError as error:  # not cached offline, unknown name, bad folder: say so, never guess
            skipped.append({"name": label, "reason": str(error)})
            continue
        loaded = time.perf_counter()
        cfg = details["pretrained_cfg"]
        pilot = embed(model, preprocess([images[i] for i in order[:PILOT_IMAGES]], cfg, image_size, crop_pct))
        if budget_s and not calibrated and len(order) > PILOT_IMAGES:
            per_image = (time.perf_counter() - loaded) / min(PILOT_IMAGES, len(order))
            per_candidate_fixed = loaded - began
            affordable = (0.8 * budget_s - (time.perf_counter() - start)) / len(names) - per_candidate_fixed
            fits = int(affordable / per_image) if per_image > 0 else len(order)
            if fits < len(order):
                order = order[:max(minimum, fits)]
                notes.append(f"sample cut to {len(order)} images to fit the {budget_s:g} s budget")
        calibrated = True
        rest = order[PILOT_IMAGES:]
        features = torch.cat([pilot, embed(model, preprocess([images[i] for i in rest], cfg, image_size, crop_pct))]
                             ) if len(rest) else pilot[:len(order)]
        embedded = time.perf_counter()
        score, lam = ridge_loo_accuracy(features, labels[order])
        done = time.perf_counter()
        rows.append({"name": label, "score": score, "stderr": math.sqrt(max(score * (1 - score), 1e-12) / len(order)),
                     "ridge_lambda": lam, "images": len(order), "image_size": int(image_size or cfg["input_size"][-1]),
                     "load_s": loaded - began, "embed_s": embedded - loaded, "probe_s": done - embedded,
                     "seconds": done - began})
    rows.sort(key=lambda r: -r["score"])
    return Ranking(rows, skipped, len(order), classes, time.perf_counter() - start, budget_s, notes=notes)
