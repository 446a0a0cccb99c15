"""The offline real image sets, read from what registry packages install (see shared offline.md).

- Fashion-MNIST: Debian ``dataset-fashion-mnist`` (IDX files) or ``$FASHION_MNIST_DIR``.
- Animal silhouettes: PyPI ``animal-mnist`` (``pip install --no-deps animal-mnist==0.4``). Its
  files are pickles; they are read with an unpickler that only admits numpy array
  reconstruction, never arbitrary code. The 10,000 images hold 9,716 unique ones: duplicates
  are removed *before* splitting so no image sits in both train and test.
- Digits: scikit-learn's bundled 8x8 digits.

Each loader returns ``(images uint8 [N, H, W], labels int64 [N])`` for a split in
{"train", "val", "test"}; splits are deterministic (fixed seed), stratified where made by us.
"""
from __future__ import annotations

import gzip
import importlib.util
import io
import os
import pickle
from pathlib import Path

import numpy as np

from zoo.domains import get_domain


class DataNotFoundError(FileNotFoundError):
    """A data source that is not installed; the message says how to get it."""


SPLITS = ("train", "val", "test")
_SEED = 20260101


def _missing(domain: str, detail: str) -> DataNotFoundError:
    return DataNotFoundError(f"{domain} data not found ({detail}). Get it with: {get_domain(domain).obtain}")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def fashion_mnist_dir() -> Path:
    candidates = [os.environ.get("FASHION_MNIST_DIR"), "/usr/share/datasets/fashion-mnist"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").exists():
            return Path(candidate)
    raise _missing("fashion_mnist", f"looked in {[c for c in candidates if c]}")


def _stratified_split(labels: np.ndarray, fractions: dict[str, float]) -> dict[str, np.ndarray]:
    """Deterministic per-class split of indices by fractions (in SPLITS order, last takes the rest)."""
    rng = np.random.default_rng(_SEED)
    parts = {name: [] for name in fractions}
    for cls in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == cls))
        start = 0
        names = list(fractions)
        for position, name in enumerate(names):
            stop = len(index) if position == len(names) - 1 else start + int(round(fractions[name] * len(index)))
            parts[name].append(index[start:stop])
            start = stop
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {SPLITS}")


def load_fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Official 60k/10k; our val = a fixed stratified 10k of the official train (train keeps 50k)."""
    _check_split(split)
    root = fashion_mnist_dir()
    if split == "test":
        return (_read_idx(root / "t10k-images-idx3-ubyte.gz"),
                _read_idx(root / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    images = _read_idx(root / "train-images-idx3-ubyte.gz")
    labels = _read_idx(root / "train-labels-idx1-ubyte.gz").astype(np.int64)
    index = _stratified_split(labels, {"train": 5 / 6, "val": 1 / 6})[split]
    return images[index], labels[index]


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Admits exactly what a pickled numpy array needs; anything else is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data pickle")
        if module.startswith("numpy.core"):
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def _animals_files() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("animal_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise _missing("animals", "the animal_mnist package is not installed")
    root = Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"
    return root / "animal_data_version_3.gz", root / "animal_label_version_3.gz"


def _unpickle_numpy(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.asarray(_NumpyOnlyUnpickler(io.BytesIO(handle.read())).load())


def load_animals(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Animal silhouettes, deduplicated, then a fixed stratified 70/15/15 train/val/test split."""
    _check_split(split)
    data_path, label_path = _animals_files()
    images = _unpickle_numpy(data_path).reshape(-1, 28, 28)
    labels = _unpickle_numpy(label_path).astype(np.int64).reshape(-1)
    if images.dtype != np.uint8:
        images = np.clip(images * (255.0 if images.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    _, first = np.unique(images.reshape(len(images), -1), axis=0, return_index=True)
    keep = np.sort(first)
    images, labels = images[keep], labels[keep]
    index = _stratified_split(labels, {"train": 0.70, "val": 0.15, "test": 0.15})[split]
    return images[index], labels[index]


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    _check_split(split)
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        raise _missing("digits", "scikit-learn is not installed") from None
    bunch = sklearn_digits()
    images = (bunch.images * (255.0 / 16.0)).round().astype(np.uint8)
    labels = bunch.target.astype(np.int64)
    index = _stratified_split(labels, {"train": 0.70, "val": 0.15, "test": 0.15})[split]
    return images[index], labels[index]


LOADERS = {"fashion_mnist": load_fashion_mnist, "animals": load_animals, "digits": load_digits}


def load_offline(domain: str, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    name = get_domain(domain).name
    if name not in LOADERS:
        raise _missing(name, "it is not an offline set; use an image folder or Hub dataset id")
    return LOADERS[name](split)
