"""What every preparer shares: items -> checked, hashed, measured -> an Arrow dataset + manifest, atomically.

On-disk format (one folder per domain), chosen for fast repeated epochs:

    <out>/manifest.json                   what was prepared from what (written last)
    <out>/<split>/data-00000-of-00001.arrow   Hugging Face `datasets` Arrow file (memory-mapped on read)
    <out>/dataset_dict.json, <out>/<split>/{dataset_info,state}.json   so `datasets.load_from_disk(out)`
                                          opens it too

Each row holds the image file's *original encoded bytes* (never re-encoded, except TIFF sources and
chips cut from larger tiles, which are stored as lossless PNG), its label(s) and its source path.
Arrow rather than Parquet because an epoch reads every row: a memory-mapped Arrow column is a
zero-copy slice per image, while Parquet pages have to be decoded first (measured in
benchmarks/data_pipeline.py).

Bad input: a missing metadata file or image folder raises DataNotFoundError naming the path and
the official archive it comes from. Images that a split list names but the download lacks are
counted and reported (a warning with expected vs found counts); undecodable or truncated images
are skipped and reported by default (`on_bad="fail"` stops instead). Nothing is written at `out`
until everything succeeded: the output is built in a hidden sibling folder and renamed.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ..offline_sets import DataNotFoundError

PREPARER_VERSION = "1"
FORMAT = "zoo-prepared"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
DEFAULT_SEED = 20260101
STATS_MAX_IMAGES = 20000  # mean/std measured on at most this many training images (a fixed subset)


class PrepareError(DataNotFoundError):
    """A download that cannot be prepared; the message says what is missing and where."""


class PartialDownloadWarning(UserWarning):
    """Fewer images or classes than the official release holds."""


@dataclass
class Item:
    split: str
    source: str  # path relative to the download (what the manifest and each row record)
    read: Callable[[], bytes] | None  # None: the file is missing from the download
    label: int | tuple = 0
    group: str | None = None  # images that must stay in one split (a patient, a sequence, a tile)


@dataclass
class Plan:
    """What a preparer found: items per split, the label names, and what it expected."""
    items: list[Item]
    label_names: list[str]
    multi_label: bool
    expected: dict[str, int] = field(default_factory=dict)  # official image counts per split (for warnings)
    metadata_files: list[Path] = field(default_factory=list)  # hashed into the manifest
    notes: dict = field(default_factory=dict)  # split method, label policy, ...
    image_mode: str = "RGB"  # how images are decoded for the check and the statistics


def require(path: Path, what: str, obtain: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{what} not found: expected {path}. {obtain}")
    return path


def file_reader(path: Path) -> Callable[[], bytes] | None:
    return (lambda: path.read_bytes()) if path.is_file() else None


def png_reader(path: Path) -> Callable[[], bytes] | None:
    """TIFF and other formats torchvision cannot decode: stored as lossless PNG."""
    if not path.is_file():
        return None

    def read() -> bytes:
        from PIL import Image
        with Image.open(path) as image:
            buffer = io.BytesIO()
            image.convert("RGB" if image.mode not in ("L", "RGB") else image.mode).save(buffer, "PNG")
        return buffer.getvalue()
    return read


def carve(items: list[Item], fraction: float, seed: int, into: str = "val", stratify: bool = True) -> dict:
    """Move a seeded `fraction` of `items` (in place) to split `into`; by group when items carry one,
    else stratified by label for single-label items. Returns the record for the manifest."""
    rng = np.random.default_rng(seed)
    if any(item.group for item in items):
        groups = sorted({item.group for item in items})
        chosen = set(rng.permutation(len(groups))[:max(1, round(fraction * len(groups)))].tolist())
        moved = {groups[i] for i in chosen}
        for item in items:
            if item.group in moved:
                item.split = into
        method = "by group"
    else:
        by_label: dict = {}
        for index, item in enumerate(items):
            key = item.label if stratify and isinstance(item.label, int) else 0
            by_label.setdefault(key, []).append(index)
        for key in sorted(by_label):
            indices = by_label[key]
            count = int(round(fraction * len(indices)))
            if len(indices) > 1 and fraction > 0:
                count = max(1, min(count, len(indices) - 1))  # keep every class on both sides
            for position in rng.permutation(len(indices))[:count]:
                items[indices[position]].split = into
        method = "stratified by label" if stratify else "random"
    return {"method": f"seeded {fraction:.0%} of the official training images -> {into}, {method}", "seed": seed}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_image(payload: tuple[bytes, str, bool]):
    """Decode fully (truncation shows only then); per-channel sums for the statistics."""
    data, mode, want_stats = payload
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            pixels = np.asarray(image.convert(mode), dtype=np.float64) / 255.0
    except Exception as error:  # PIL raises many types for broken files
        return None, f"{type(error).__name__}: {error}"
    if not want_stats:
        return (None, None), None
    pixels = pixels.reshape(-1, 1 if mode == "L" else 3)
    return (pixels.mean(0), (pixels ** 2).mean(0)), None


def _features(label_names: list[str], multi_label: bool):
    from datasets import ClassLabel, Features, Image, List, Value

    label = ClassLabel(names=list(label_names))
    return Features(image=Image(), **({"labels": List(label)} if multi_label else {"label": label}),
                    source=Value("string"))


def _write_split_metadata(split_dir: Path, features, split: str, rows: int) -> None:
    """The two small files `datasets.load_from_disk` expects next to an Arrow file."""
    info = {"features": features.to_dict(), "splits": {split: {"name": split, "num_examples": rows}}}
    (split_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    state = {"_data_files": [{"filename": "data-00000-of-00001.arrow"}], "_fingerprint": hashlib.sha256(
        f"{split_dir.parent.name}/{split}/{rows}".encode()).hexdigest()[:16], "_format_columns": None,
        "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": split}
    (split_dir / "state.json").write_text(json.dumps(state, indent=2))


def _iter_checked(items: list[Item], mode: str, workers: int, stats_for: set) -> Iterator:
    """(item, bytes | None, check result, error) in order; decoding in `workers` processes."""
    def payloads():
        for index, item in enumerate(items):
            data = None
            if item.read is not None:
                try:
                    data = item.read()
                except OSError as error:
                    yield item, None, None, f"unreadable: {error}"
                    continue
            yield item, data, index in stats_for, None

    if workers > 1:
        import multiprocessing
        pool = multiprocessing.get_context("spawn").Pool(workers)
    else:
        pool = None
    try:
        stream = payloads()
        buffered = []
        for entry in stream:
            buffered.append(entry)
            if len(buffered) >= 64 * max(1, workers):
                yield from _check_batch(buffered, mode, pool)
                buffered = []
        yield from _check_batch(buffered, mode, pool)
    finally:
        if pool is not None:
            pool.terminate()


def _check_batch(entries, mode, pool):
    todo = [(data, mode, stats) for _, data, stats, error in entries if data is not None and error is None]
    results = iter(pool.map(_check_image, todo) if pool is not None else map(_check_image, todo))
    for item, data, _, error in entries:
        if data is None or error is not None:
            yield item, None, None, error or "missing"
        else:
            result, problem = next(results)
            yield item, (data if problem is None else None), result, problem


def write_prepared(plan: Plan, domain, download: Path, out: Path, *, on_bad: str = "skip", workers: int = 1,
                   options: dict | None = None, force: bool = False) -> Path:
    """Check, hash and measure every image of `plan`, write the Arrow splits and the manifest into a
    hidden sibling folder, then rename it to `out` (replacing a finished earlier one only with force)."""
    from datasets.arrow_writer import ArrowWriter

    if on_bad not in ("skip", "fail"):
        raise ValueError(f"on_bad must be 'skip' or 'fail', not {on_bad!r}")
    out = Path(out).expanduser().absolute()
    if out.exists() and not force:
        raise FileExistsError(f"{out} already exists" + (
            " (a finished prepared dataset; pass --force to rebuild it)" if (out / MANIFEST).exists() else
            " and is not a prepared dataset; choose another --out"))
    if out.is_symlink():
        raise ValueError(f"{out} is a symlink; give a real folder as --out")
    by_split = {split: [item for item in plan.items if item.split == split] for split in SPLITS}
    for split, items in by_split.items():
        if not items:
            raise PrepareError(f"{domain.name}: no {split} images found in {download} "
                               f"(the layout is described in the README's domain table)")
    features = _features(plan.label_names, plan.multi_label)
    label_key = "labels" if plan.multi_label else "label"
    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    scratch.chmod(0o777 & ~umask)  # mkdtemp's 0700 would survive the rename
    started = time.time()
    try:
        rng = np.random.default_rng(DEFAULT_SEED)
        train_count = len(by_split["train"])
        stats_for = set(rng.permutation(train_count)[:STATS_MAX_IMAGES].tolist())
        splits_record, bad, missing, sums, squares, measured = {}, [], {}, 0.0, 0.0, 0
        for split in SPLITS:
            items = by_split[split]
            split_dir = scratch / split
            split_dir.mkdir()
            writer = ArrowWriter(features=features, path=str(split_dir / "data-00000-of-00001.arrow"))
            digest, rows, size, label_counts = hashlib.sha256(), 0, 0, np.zeros(len(plan.label_names), np.int64)
            want = stats_for if split == "train" else set()
            for item, data, result, problem in _iter_checked(items, plan.image_mode, workers, want):
                if problem == "missing":
                    missing.setdefault(split, []).append(item.source)
                    continue
                if problem is not None:
                    if on_bad == "fail":
                        raise PrepareError(f"{download / item.source}: cannot decode ({problem}); remove or "
                                           f"re-download it, or prepare with --on-bad skip to leave it out")
                    bad.append({"source": item.source, "error": problem[:200]})
                    continue
                if result[0] is not None:
                    sums, squares, measured = sums + result[0], squares + result[1], measured + 1
                sha = hashlib.sha256(data).hexdigest()
                digest.update(f"{item.source}\0{sha}\n".encode())
                size += len(data)
                label = list(item.label) if plan.multi_label else int(item.label)
                label_counts[label] += 1
                writer.write({"image": {"bytes": data, "path": None}, label_key: label, "source": item.source})
                rows += 1
            writer.finalize()
            if rows == 0:
                raise PrepareError(f"{domain.name}: none of the {len(items)} {split} images listed could be read "
                                   f"from {download}; is this the right folder?")
            _write_split_metadata(split_dir, features, split, rows)
            splits_record[split] = {"images": rows, "bytes": size, "sha256": digest.hexdigest(),
                                    "label_counts": label_counts.tolist()}
        _warn_partial(domain, plan, splits_record, missing)
        if bad:
            warnings.warn(f"{domain.name}: skipped {len(bad)} undecodable image(s), e.g. {bad[0]['source']} "
                          f"({bad[0]['error']}); listed in {out / MANIFEST} under 'skipped'", stacklevel=2)
        mean = (sums / max(measured, 1))
        std = np.sqrt(np.maximum(squares / max(measured, 1) - mean ** 2, 0.0))
        manifest = {
            "format": FORMAT, "preparer_version": PREPARER_VERSION, "domain": domain.name,
            "task": "multi-label" if plan.multi_label else "single-label", "label_names": plan.label_names,
            "num_classes": len(plan.label_names), "label_column": label_key, "image_mode": plan.image_mode,
            "splits": splits_record, "expected": plan.expected,
            "missing": {split: {"count": len(paths), "examples": paths[:20]} for split, paths in missing.items()},
            "skipped": bad,
            "measured_stats": {"mean": [round(float(v), 4) for v in np.atleast_1d(mean)],
                               "std": [round(float(v), 4) for v in np.atleast_1d(std)], "images": measured,
                               "rule": "per-image channel means and mean squares averaged over images "
                                       "(the HPT study's compute-dataset-pixel-mean-std.py)"},
            "source": {"download": str(download), "metadata_files": [
                {"path": str(p.relative_to(download)) if p.is_relative_to(download) else str(p),
                 "bytes": p.stat().st_size, "sha256": sha256_file(p)} for p in plan.metadata_files]},
            "notes": plan.notes, "options": options or {}, "seconds": round(time.time() - started, 1),
        }
        (scratch / "dataset_dict.json").write_text(json.dumps({"splits": list(SPLITS)}))
        (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(scratch, out)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return out


def _warn_partial(domain, plan: Plan, splits: dict, missing: dict) -> None:
    found = sum(s["images"] for s in splits.values())
    expected = sum(plan.expected.values()) if plan.expected else None
    lacking = sum(len(v) for v in missing.values())
    parts = []
    if expected and found < expected:
        parts.append(f"expected {expected} images (official release), found {found}")
    if lacking:
        parts.append(f"{lacking} image(s) named by the split lists are not in the download "
                     f"(e.g. {next(iter(missing.values()))[0]})")
    if not plan.multi_label:
        empty = [plan.label_names[i] for i, c in enumerate(splits["train"]["label_counts"]) if c == 0]
        if empty:
            parts.append(f"expected {len(plan.label_names)} classes in train, found "
                         f"{len(plan.label_names) - len(empty)} (none of: {', '.join(empty[:5])})")
    if parts:
        warnings.warn(f"{domain.name}: partial download: " + "; ".join(parts), PartialDownloadWarning, stacklevel=3)


def _replace(scratch: Path, out: Path) -> None:
    """Rename the finished folder into place; an earlier finished one is moved aside first, then removed."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(scratch, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(scratch, out)


def read_manifest(folder: Path) -> dict | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if manifest.get("format") == FORMAT else None


def sorted_files(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    suffixes = tuple(s.lower() for s in suffixes)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
