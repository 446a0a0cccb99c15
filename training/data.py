"""Image sources, all as Hugging Face `datasets.Dataset`s with an image column and (maybe) labels.

A source spec is one of:
- a prepared folder (``python -m training prepare DOMAIN DOWNLOAD``, training.prepare): Arrow splits
  memory-mapped, each image's encoded bytes sliced without a copy (training.encoded_views decodes
  them straight into augmented views); its
  manifest names the domain, and the registry (zoo.domains) must agree with it;
- an offline real set by domain name (``fashion_mnist``, ``animals``, ``digits``): read from what
  registry packages install (training.offline_sets) and wrapped in a Dataset built from Arrow
  arrays (fast: no PNG round trip);
- a folder: ``datasets`` ``imagefolder`` layout (``<dir>/<split>/<class>/<image>`` or
  ``<dir>/<class>/<image>``);
- ``hf:<dataset id>`` (or any ``org/name`` that is not a local path): a Hub dataset, which needs the
  Hub (or its cache) to be reachable.
A source that cannot be found raises DataNotFoundError naming how to install or point to it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from zoo.domains import Domain, get_domain, resolve_domain_name

from .offline_sets import LOADERS, DataNotFoundError, load_offline

if TYPE_CHECKING:  # datasets is imported lazily: it costs ~1 s, and the zoo side never needs it
    import datasets

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")
# decode a whole source into one uint8 tensor when it is at most this many pixels (fast epochs)
CACHE_PIXELS = 512 * 1024 * 1024


@dataclass
class ImageSet:
    dataset: datasets.Dataset
    spec: str
    split: str
    domain: Domain | None
    image_column: str
    label_column: str | None
    num_classes: int | None
    multi_label: bool = False
    _array: np.ndarray | None = None  # [N, H, W, C] uint8 when cached
    _reader: object | None = None  # callable index -> uint8 [C, H, W] (prepared sets)
    manifest: dict | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def channels(self) -> int:
        return int(self.image(0).shape[0])

    def image(self, index: int) -> torch.Tensor:
        """uint8 [C, H, W]."""
        if self._array is not None:
            return torch.from_numpy(self._array[index]).permute(2, 0, 1)
        if self._reader is not None:
            return self._reader(int(index))
        return to_chw(self.dataset[int(index)][self.image_column])

    def encoded(self, index: int) -> np.ndarray:
        """The image's encoded bytes (prepared sets only): a zero-copy slice of the mapped Arrow file."""
        return self._reader.encoded(int(index))

    def labels(self) -> np.ndarray:
        if self.label_column is None:
            raise ValueError(f"{self.spec} ({self.split}) has no label column; evaluation needs labels")
        values = self.dataset[self.label_column]
        if self.multi_label:
            out = np.zeros((len(values), self.num_classes), dtype=np.float32)
            for row, labels in enumerate(values):
                out[row, list(labels)] = 1.0
            return out
        return np.asarray(values, dtype=np.int64)

    def describe(self) -> dict:
        described = {"source": self.spec, "split": self.split, "images": len(self),
                     "domain": self.domain.name if self.domain else None}
        if self.manifest:  # what exactly was trained on: the prepared split's content hash and preparer
            split = self.manifest["splits"].get(self.split, {})
            described.update(prepared_sha256=split.get("sha256"), preparer_version=self.manifest["preparer_version"],
                             labels=self.manifest["num_classes"])
        return described


def to_chw(image) -> torch.Tensor:
    if hasattr(image, "mode"):  # PIL
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        array = np.array(image)  # writable: a tensor over PIL's read-only buffer must never be written to
    else:
        array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def _offline_dataset(name: str, split: str):
    import pyarrow as pa
    from datasets import ClassLabel, Dataset, DatasetInfo, Features, List, Value

    images, labels = load_offline(name, split)
    n, height, width = images.shape
    pixels = pa.FixedSizeListArray.from_arrays(pa.FixedSizeListArray.from_arrays(pa.array(images.ravel()), width),
                                               height)
    names = list(FASHION_CLASSES) if name == "fashion_mnist" else [str(i) for i in range(int(labels.max()) + 1)]
    features = Features(image=List(List(Value("uint8"), length=width), length=height),
                        label=ClassLabel(names=names))
    table = pa.table({"image": pixels, "label": pa.array(labels)}).cast(features.arrow_schema)
    dataset = Dataset(table, info=DatasetInfo(features=features, description=f"{name} ({split}), offline"))
    return dataset, np.require(images[:, :, :, None], requirements=["W"])  # torch wants writable memory


def _find_columns(dataset) -> tuple[str, str | None, int | None, bool]:
    from datasets import ClassLabel, Image, List, Sequence

    image = next((c for c, f in dataset.features.items() if isinstance(f, Image)), None)
    if image is None:
        image = next((c for c in ("image", "img", "pixel_values") if c in dataset.features), None)
    if image is None:
        raise ValueError(f"no image column in {list(dataset.features)}")
    label, classes, multi = None, None, False
    for column, feature in dataset.features.items():
        if isinstance(feature, ClassLabel):
            label, classes = column, feature.num_classes
            break
        inner = getattr(feature, "feature", None)
        if isinstance(feature, (List, Sequence)) and isinstance(inner, ClassLabel):
            label, classes, multi = column, inner.num_classes, True
            break
    if label is None and "label" in dataset.features:
        label = "label"
        classes = int(max(dataset["label"])) + 1
    return image, label, classes, multi


def _how_to_point(spec: str) -> str:
    return (f"--data takes a prepared folder (python -m training prepare DOMAIN DOWNLOAD --out DIR), "
            f"an offline set ({', '.join(LOADERS)}), an image folder "
            f"(<dir>/<split>/<class>/<image>), or hf:<dataset id>[@<revision>] for a Hub dataset; "
            f"{spec!r} is none of these")


class EncodedColumn:
    """Index -> uint8 [C, H, W] straight from a memory-mapped Arrow column of encoded images: the bytes
    are a zero-copy slice of the mapped file, decoded by PIL."""

    def __init__(self, dataset, column: str = "image", mode: str = "RGB"):
        import pyarrow as pa

        self.gray = mode == "L"

        self.chunks, self.starts = [], [0]
        for chunk in dataset.data.table.column(column).chunks:
            binary = chunk.field("bytes") if isinstance(chunk, pa.StructArray) else chunk
            if binary.null_count:
                raise ValueError(f"{column}: rows without image bytes")
            offsets_buffer, data_buffer = binary.buffers()[1:3]
            wide = pa.types.is_large_binary(binary.type)
            offsets = np.frombuffer(offsets_buffer, dtype=np.int64 if wide else np.int32)
            offsets = offsets[binary.offset:binary.offset + len(binary) + 1]
            self.chunks.append((offsets, np.frombuffer(data_buffer, dtype=np.uint8)))
            self.starts.append(self.starts[-1] + len(binary))

    def encoded(self, index: int) -> np.ndarray:
        chunk = int(np.searchsorted(self.starts, index, side="right")) - 1
        offsets, data = self.chunks[chunk]
        local = index - self.starts[chunk]
        return data[offsets[local]:offsets[local + 1]]

    def __call__(self, index: int) -> torch.Tensor:
        # PIL (libjpeg-turbo, as fast as torchvision.io here) rather than torchvision.io's decoders,
        # deprecated since torchvision 0.29
        import io

        from PIL import Image

        with Image.open(io.BytesIO(self.encoded(index).tobytes())) as image:
            return to_chw(image.convert("L" if self.gray else "RGB"))


def open_prepared(folder: Path, split: str, domain: str | None = None) -> ImageSet:
    """A `python -m training prepare` output; refuses one the registry disagrees with."""
    from datasets import Dataset

    from .prepare.core import read_manifest

    manifest = read_manifest(folder)
    name = manifest["domain"]
    if domain and resolve_domain_name(domain) != name:
        raise ValueError(f"{folder} holds prepared {name!r} data, not {domain!r}; pass the matching --domain "
                         f"or the folder prepared for {domain!r}")
    info = get_domain(name)
    task = manifest["task"]
    if manifest["num_classes"] != info.num_classes or task != info.task:
        raise ValueError(f"{folder}: prepared data has {manifest['num_classes']} {task} classes but the registry "
                         f"(zoo/domains.py) says {info.num_classes} {info.task} for {name!r}; re-run "
                         f"python -m training prepare {name} <download> --out {folder} --force")
    names = _split_names(split)
    found = next((n for n in names if (folder / n / "data-00000-of-00001.arrow").is_file()), None)
    if found is None:
        raise DataNotFoundError(f"{folder} has no {split!r} split (found: {', '.join(manifest['splits'])})")
    dataset = Dataset.from_file(str(folder / found / "data-00000-of-00001.arrow"))
    expected = manifest["splits"][found]["images"]
    if len(dataset) != expected:
        raise DataNotFoundError(f"{folder / found}: {len(dataset)} rows but the manifest says {expected}; "
                                f"the folder was changed after prepare, re-run it with --force")
    images = ImageSet(dataset, str(folder), found, info, "image", manifest["label_column"], info.num_classes,
                      multi_label=task == "multi-label", manifest=manifest)
    images._reader = EncodedColumn(dataset, mode=manifest.get("image_mode", "RGB"))
    return images


def open_source(spec: str, split: str = "train", domain: str | None = None, cache: bool = True) -> ImageSet:
    """Open a source for a split ('train', 'val'/'validation', 'test')."""
    from .prepare.core import MANIFEST

    if _looks_like_path(spec) and (Path(spec).expanduser() / MANIFEST).is_file():
        images = open_prepared(Path(spec).expanduser(), split, domain)
        if cache:
            _maybe_cache(images)
        return images
    offline = resolve_domain_name(spec) if not os.sep in spec else None
    if offline in LOADERS:
        dataset, array = _offline_dataset(offline, split)
        return ImageSet(dataset, offline, split, get_domain(domain or offline), "image", "label",
                        dataset.features["label"].num_classes, _array=array)
    dataset = _load_folder(spec, split) if _looks_like_path(spec) else _load_hub(spec, split)
    image, label, classes, multi = _find_columns(dataset)
    images = ImageSet(dataset, spec, split, get_domain(domain) if domain else None, image, label, classes, multi)
    if cache:
        _maybe_cache(images)
    return images


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or os.path.exists(spec) or (os.sep in spec and not spec.startswith("hf:")
                                                                       and spec.count("/") != 1)


def _split_names(split: str) -> list[str]:
    return {"val": ["val", "validation", "valid"], "validation": ["validation", "val", "valid"],
            "test": ["test"], "train": ["train"]}.get(split, [split])


def _load_folder(spec: str, split: str):
    from datasets import load_dataset

    root = Path(spec).expanduser()
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {root} does not exist. {_how_to_point(spec)}")
    try:
        splits = load_dataset("imagefolder", data_dir=str(root))
    except Exception as error:  # datasets raises several types for empty or odd folders
        raise DataNotFoundError(f"could not read {root} as an image folder ({type(error).__name__}: {error}). "
                                f"Expected <dir>/<split>/<class>/<image> or <dir>/<class>/<image>.") from None
    for name in _split_names(split):
        if name in splits:
            return splits[name]
    if split == "train" and len(splits) == 1:
        return next(iter(splits.values()))
    raise DataNotFoundError(f"{root} has no {split!r} split (found: {', '.join(splits)}); "
                            f"put images under {root}/{split}/<class>/")


def _load_hub(spec: str, split: str):
    """hf:<org>/<name>[@<revision>]: through `datasets` from the Hub, or whatever HF_ENDPOINT names
    (an olah mirror); with HF_HUB_OFFLINE=1 from the local cache. A revision pins the data."""
    from datasets import load_dataset

    repo = spec[3:] if spec.startswith("hf:") else spec
    repo, _, revision = repo.partition("@")
    last_error = None
    for name in _split_names(split):
        try:
            return load_dataset(repo, split=name, revision=revision or None)
        except ValueError as error:  # unknown split: try the next spelling
            last_error = error
        except Exception as error:
            raise DataNotFoundError(
                f"Hub dataset {repo!r}{f' at {revision!r}' if revision else ''} could not be loaded "
                f"({type(error).__name__}: {str(error)[:200]}). It needs the Hub or a mirror (HF_ENDPOINT), "
                f"or HF_HUB_OFFLINE=1 with a cache filled earlier by the same call online. "
                f"{_how_to_point(spec)}") from None
    raise DataNotFoundError(f"Hub dataset {repo!r} has no split {split!r}: {last_error}")


def _maybe_cache(images: ImageSet) -> None:
    first = images.image(0)
    if len(images) * first.numel() > CACHE_PIXELS:
        return
    array = np.empty((len(images), first.shape[1], first.shape[2], first.shape[0]), dtype=np.uint8)
    for index in range(len(images)):
        item = images.image(index)
        if item.shape != first.shape:  # mixed sizes: decode lazily per item instead
            return
        array[index] = item.permute(1, 2, 0).numpy()
    images._array = array
