"""The public entry points: name -> catalog entry -> verified files -> module (+ BN overlay)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from . import build
from .bn import apply_bn
from .cards import data_terms  # noqa: F401  (re-exported: zoo.loader.data_terms)
from .catalog import Entry, check_variant, resolve
from .checkpoint import BN_DIR, CARD, CONFIG, META, WEIGHTS, is_checkpoint_dir, is_overlay_dir, read_json
from .errors import (CheckpointFormatError, IncompatibleOverlayError, IncompleteEntryError, InvalidArgumentError,
                     UnknownVariantError, UnverifiedCheckpointWarning, close_matches, shorten)
from .fetch import check_revision, download, fetch, resolve_revision
from .integrity import require_verified

MAX_NUM_CLASSES = 100_000  # a fresh head beyond this is a typo, and would allocate gigabytes


def _check_name(name) -> None:
    if isinstance(name, os.PathLike):
        return
    if not isinstance(name, str) or not name.strip() or "\0" in name:
        raise InvalidArgumentError(f"a model is named by a non-empty string (a zoo name such as 'sup-imagenet-mnv2') "
                                   f"or a checkpoint folder path, not {shorten(name)}")


def check_arguments(bn, num_classes, device, dtype) -> None:
    """Every argument of load() checked before anything is downloaded or built; typed errors with the fix."""
    if bn is not None and (not isinstance(bn, str) or not bn.strip() or "\0" in bn or len(bn) > 200):
        raise InvalidArgumentError(f"bn must be a BN variant name (a domain such as 'animals', see "
                                   f"zoo.info(name)['bn_variants']) or None, not {shorten(bn)}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or not 0 <= num_classes <= MAX_NUM_CLASSES):
        raise InvalidArgumentError(f"num_classes must be 0 (backbone), None (the checkpoint's classifier) or a class "
                                   f"count from 1 to {MAX_NUM_CLASSES} (an int), not {shorten(num_classes)}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        hint = f"; did you mean torch.{dtype}?" if isinstance(dtype, str) and isinstance(
            getattr(torch, dtype, None), torch.dtype) else ""
        raise InvalidArgumentError(f"dtype must be a floating torch.dtype such as torch.float16, torch.bfloat16 or "
                                   f"torch.float32, not {shorten(dtype)}{hint}")
    if device is not None:
        _check_device(device)


def _check_device(device) -> None:
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise InvalidArgumentError(f"device must be a torch.device, a string such as 'cpu' or 'cuda:0', or a CUDA "
                                   f"index, not {shorten(device)}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise InvalidArgumentError(f"device {shorten(device)} is not a device torch knows; use 'cpu', 'cuda', "
                                   f"'cuda:<index>' or 'mps'") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index is not None and parsed.index >= count):
            raise InvalidArgumentError(f"device {shorten(device)}: this machine has {count} CUDA device(s); "
                                       f"use device='cpu'" + (f" or an index below {count}" if count else ""))
    elif parsed.type == "mps":
        if not torch.backends.mps.is_available():
            raise InvalidArgumentError(f"device {shorten(device)}: MPS is not available here; use device='cpu'")
    elif parsed.type != "cpu":  # 'meta' would return a module without weights
        raise InvalidArgumentError(f"device {shorten(device)} is not supported; use 'cpu', 'cuda[:<index>]' or 'mps'")


def _local_dir(name) -> Path | None:
    _check_name(name)
    if isinstance(name, os.PathLike) or (isinstance(name, str) and (os.sep in name or name.startswith(".")
                                                                    or os.path.isdir(name))):
        path = Path(name)
        try:
            is_folder = is_checkpoint_dir(path)
        except OSError as error:  # a name too long for a path, a folder we may not read
            raise CheckpointFormatError(f"{shorten(str(path), 300)} cannot be read as a checkpoint folder "
                                        f"({error.strerror or error})") from None
        if not is_folder:
            raise CheckpointFormatError(f"{shorten(str(path), 300)} is not a zoo checkpoint folder (needs {CONFIG} and "
                                        f"{WEIGHTS}); export one with training's export or `zoo convert`")
        return path
    return None


def _read_object(path: Path) -> dict:
    data = read_json(path)
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} must hold a JSON object, not a {type(data).__name__}")
    return data


def _text_field(data: dict, key: str, path: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise CheckpointFormatError(f"{path} has no {key!r} (a non-empty string); re-export or re-convert the folder")
    return value


def _file_record(meta: dict, filename: str, path: Path) -> dict | None:
    weights = meta.get("weights", {})
    record = weights.get(filename) if isinstance(weights, dict) else None
    if record is None:
        return None
    if (not isinstance(record, dict) or not isinstance(record.get("sha256"), str)
            or isinstance(record.get("size"), bool) or not isinstance(record.get("size"), int)):
        raise CheckpointFormatError(f"{path}: the record of {filename} needs a sha256 string and an integer size")
    return record


def _config(directory: Path) -> tuple[dict, str, int, dict | None]:
    config = _read_object(directory / CONFIG)
    architecture = _text_field(config, "architecture", directory / CONFIG)
    classes, model_args = config.get("num_classes", 0), config.get("model_args")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 0:
        raise CheckpointFormatError(f"{directory / CONFIG}: num_classes must be an integer >= 0, not {shorten(classes)}")
    if model_args is not None and not isinstance(model_args, dict):
        raise CheckpointFormatError(f"{directory / CONFIG}: model_args must be a JSON object")
    return config, architecture, classes, model_args


def _overlay_trunk(directory: Path, meta: dict) -> str:
    """The trunk an overlay folder applies to: a zoo name, or a full checkpoint folder (never another overlay)."""
    trunk_record = meta.get("trunk")
    trunk = trunk_record.get("name") if isinstance(trunk_record, dict) else None
    if not isinstance(trunk, str) or not trunk:
        raise CheckpointFormatError(f"{directory / META}: 'trunk' must be an object with the trunk's 'name'")
    if not os.path.isabs(trunk) and (directory / trunk).exists():
        trunk = str(directory / trunk)  # a trunk folder given relative to this folder
    if os.path.isdir(trunk) and is_overlay_dir(trunk):
        raise CheckpointFormatError(f"{directory}: its trunk {shorten(trunk, 300)} is itself an overlay folder; an "
                                    f"overlay applies to a full checkpoint (a zoo name or a folder with {WEIGHTS})")
    return trunk


def _local_overlay(directory: Path, meta: dict, bn: str) -> Path:
    available = meta.get("bn_variants", [])
    if not isinstance(available, list) or not all(isinstance(v, str) for v in available):
        raise CheckpointFormatError(f"{directory / META}: bn_variants must be a list of names")
    if bn not in available:
        near = close_matches(bn, available)
        raise UnknownVariantError(f"{directory} has no BN variant {shorten(bn)}; available: {', '.join(available) or 'none'}."
                                  + (f" Did you mean {', '.join(near)}?" if near else ""))
    return directory / BN_DIR / f"{bn}.safetensors"


def _load_overlay_dir(directory: Path, bn, num_classes, device, dtype) -> torch.nn.Module:
    """Trunk (by name or folder, checked by sha256) + this folder's overlay."""
    meta = _read_object(directory / META)
    variant = bn or _text_field(meta, "default_bn", directory / META)
    overlay = _local_overlay(directory, meta, variant)
    record = _file_record(meta, f"{BN_DIR}/{variant}.safetensors", directory / META)
    if record is None:
        raise CheckpointFormatError(f"{directory / META} records no hash for {BN_DIR}/{variant}.safetensors")
    require_verified(overlay, record["sha256"], record["size"], "BN overlay", "The file changed; re-create it.")
    trunk = _overlay_trunk(directory, meta)
    actual = _trunk_sha(trunk)
    if actual != meta.get("trunk_sha256"):
        raise IncompatibleOverlayError(f"{directory} was made for trunk {trunk} with sha256 "
                                       f"{str(meta.get('trunk_sha256'))[:12]}..., "
                                       f"but {trunk} now has {str(actual)[:12]}...; recreate the overlay on this trunk")
    model = load(trunk, num_classes=None)
    apply_bn(model, overlay, actual)
    file_classes = int(getattr(model, "num_classes", 0))
    return build.finish(model, num_classes, file_classes, device, dtype)


def trunk_sha256(details: dict) -> str | None:
    """The sha256 of a checkpoint's trunk file, from `info(...)` (local folders and catalog entries alike)."""
    sha = details.get("trunk_sha256") or details.get("files", {}).get(WEIGHTS, {}).get("sha256")
    if sha is None and details.get("kind") == "upstream":  # known once the publisher's file is converted
        from . import upstream
        sha = upstream.trunk_sha256(details["name"])
    return sha


def _trunk_sha(name) -> str | None:
    return trunk_sha256(info(name))


def _verify_local(directory: Path, meta: dict | None, filename: str, fix: str) -> None:
    """Check a local folder's file against zoo.json; a file nothing records is loaded with a loud warning."""
    record = _file_record(meta, filename, directory / META) if meta is not None else None
    if record is not None:
        require_verified(directory / filename, record["sha256"], record["size"], "local checkpoint", fix)
        return
    reason = f"it has no {META}" if meta is None else f"its {META} records no hash for {filename}"
    warnings.warn(f"{directory}: {filename} is NOT verified ({reason}): it is loaded as it is, and an edit or "
                  f"corruption would go unnoticed. Re-export the folder (training export or `zoo convert`) to get "
                  f"hashes.", UnverifiedCheckpointWarning, stacklevel=4)


def _load_local(directory: Path, bn, num_classes, device, dtype) -> torch.nn.Module:
    if is_overlay_dir(directory):
        return _load_overlay_dir(directory, bn, num_classes, device, dtype)
    _, architecture, file_classes, model_args = _config(directory)
    meta = _read_object(directory / META) if (directory / META).exists() else None
    fix = "The file changed after export; re-export it."
    _verify_local(directory, meta, WEIGHTS, fix)  # exported folders carry their own hashes: a change is caught
    _verify_local(directory, meta, CONFIG, fix)  # config.json decides the network: model_args, architecture
    overlay = None
    if bn:
        overlay = _local_overlay(directory, meta or {}, bn)
        record = _file_record(meta, f"{BN_DIR}/{bn}.safetensors", directory / META)
        if record is None:
            raise CheckpointFormatError(f"{directory / META} records no hash for {BN_DIR}/{bn}.safetensors")
        require_verified(overlay, record["sha256"], record["size"], "BN overlay", fix)
    model = build.build_from_file(architecture, directory / WEIGHTS, file_classes, model_args)
    if overlay is not None:
        apply_bn(model, overlay, (meta or {}).get("trunk_sha256") or "")
    return build.finish(model, num_classes, file_classes, device, dtype)


def load(name: str | os.PathLike, *, bn: str | None = None, revision: str | None = None,
         num_classes: int | None = 0, device=None, dtype=None) -> torch.nn.Module:
    """A ready module (eval mode) for a published name or a local checkpoint folder.

    bn: a BN-statistic variant (``zoo.info(name)["bn_variants"]``). num_classes: 0 = backbone
    (pooled features), None = keep the checkpoint's own classifier, N = a fresh N-way head.
    revision: another published revision of the same repo; its files are then checked against
    that revision's own zoo.json instead of the catalog.
    """
    check_arguments(bn, num_classes, device, dtype)
    directory = _local_dir(name)
    if directory is not None:
        if revision is not None:
            raise InvalidArgumentError(f"revision= applies to published names, not to a local folder ({directory})")
        return _load_local(directory, bn, num_classes, device, dtype)
    entry, implied_bn = resolve(str(name))
    if entry.data.get("kind") == "upstream":  # a publisher's file, converted into the zoo cache on first use
        from . import upstream
        return _load_local(upstream.folder_to_load(entry, bn=bn, revision=revision), None, num_classes, device,
                           dtype)
    revision = check_revision(entry, revision)
    if revision is not None:
        revision = resolve_revision(entry, revision)  # a branch or tag: one commit for every file
    if implied_bn and bn and implied_bn != bn:
        raise UnknownVariantError(f"{name} already means BN variant {implied_bn!r}; do not also pass bn={shorten(bn)}")
    bn = bn or implied_bn
    if "trunk" in entry.data:  # a published overlay (Base, HPT-BN): the trunk by name + this repo's BN file
        return _load_overlay_entry(entry, bn, revision, num_classes, device, dtype)
    variant = check_variant(entry, bn) if bn else None
    files = _file_records(entry, revision)
    trunk_record = _record(entry, revision, files, WEIGHTS)
    weights = fetch(entry, WEIGHTS, revision, trunk_record)
    file_classes = int(entry.num_classes)
    model = build.build_from_file(entry.timm_arch, weights, file_classes, entry.data.get("model_args"))
    if variant:
        overlay_name = f"{BN_DIR}/{variant}.safetensors"
        apply_bn(model, fetch(entry, overlay_name, revision, _record(entry, revision, files, overlay_name)),
                 trunk_record["sha256"])
    return build.finish(model, num_classes, file_classes, device, dtype)


def _load_overlay_entry(entry: Entry, bn, revision, num_classes, device, dtype) -> torch.nn.Module:
    variant = check_variant(entry, bn or entry.default_bn)
    trunk, _ = resolve(entry.trunk)
    if trunk.file(WEIGHTS)["sha256"] != entry.trunk_sha256:
        raise IncompatibleOverlayError(f"{entry.name} was made for {entry.trunk} with trunk sha256 "
                                       f"{entry.trunk_sha256[:12]}..., but the catalog's {entry.trunk} now has "
                                       f"{trunk.file(WEIGHTS)['sha256'][:12]}...; republish the overlay on it")
    model = load(trunk.name, num_classes=None)
    overlay_name = f"{BN_DIR}/{variant}.safetensors"
    apply_bn(model, fetch(entry, overlay_name, revision, _record(entry, revision, _file_records(entry, revision),
                                                                overlay_name)), entry.trunk_sha256)
    return build.finish(model, num_classes, int(trunk.num_classes), device, dtype)


def _record(entry: Entry, revision: str | None, files: dict, filename: str) -> dict:
    """The sha256 + size a file must have: the catalog's (a missing one is named), or the revision's zoo.json's."""
    if (revision is None or revision == entry.revision) and not isinstance(entry.files.get(filename), dict):
        raise IncompleteEntryError(f"catalog entry {entry.name[:80]!r} records no sha256 for {filename}; re-publish "
                                   f"it with `zoo publish --catalog`")
    if revision is None or revision == entry.revision:
        return entry.file(filename)
    if not isinstance(files.get(filename), dict):
        raise CheckpointFormatError(f"{entry.name}@{revision}: no sha256 is recorded for {filename}; it cannot be "
                                    f"verified")
    return files[filename]


def _file_records(entry: Entry, revision: str | None) -> dict:
    if revision is None or revision == entry.revision:
        return entry.files
    for earlier in entry.data.get("history", []):  # a revision the catalog pinned before: its own hashes
        if earlier.get("revision") == revision:
            return earlier["files"]
    path = Path(download(entry, META, revision))
    try:
        meta = _read_object(path)
    except CheckpointFormatError as error:
        raise CheckpointFormatError(f"{entry.name}@{revision}: the server's {META} is not usable ({error})") from None
    needed = [WEIGHTS] + [name for name in meta.get("weights", {}) if isinstance(name, str)
                          and name.startswith(f"{BN_DIR}/")] if isinstance(meta.get("weights"), dict) else [WEIGHTS]
    records = {}
    for filename in needed:
        record = _file_record(meta, filename, path)
        if record is None:
            raise CheckpointFormatError(f"{entry.name}@{revision}: its {META} records no hash for {filename}; "
                                        f"it cannot be verified")
        records[filename] = record
    return records


def info(name: str | os.PathLike) -> dict:
    """Everything known about a checkpoint without downloading weights."""
    directory = _local_dir(name)
    if directory is not None and is_overlay_dir(directory):
        meta = _read_object(directory / META)
        trunk = info(_overlay_trunk(directory, meta))
        return {**meta, "path": str(directory), "pretrained_cfg": trunk.get("pretrained_cfg", {}),
                "timm_arch": trunk.get("timm_arch")}
    if directory is not None:
        meta = _read_object(directory / META) if (directory / META).exists() else {}
        config, architecture, _, _ = _config(directory)
        cfg = config.get("pretrained_cfg", {})
        return {"name": meta.get("name", str(directory)), "path": str(directory), **meta,
                "pretrained_cfg": cfg if isinstance(cfg, dict) else {}, "timm_arch": architecture}
    entry, implied_bn = resolve(str(name))
    details = {"name": entry.name, **entry.data}
    if entry.data.get("kind") == "upstream":
        from . import upstream
        details.update(upstream.converted_details(entry))
    details["terms"] = data_terms(details)
    if implied_bn:
        details.update(name=str(name), bn_variant=implied_bn, strategy="base", trunk=entry.name, domain=implied_bn,
                       method="bn-recalibration")
        # the input the variant's statistics were computed at, where recorded
        details["pretrained_cfg"] = {**details.get("pretrained_cfg", {}),
                                     **details.get("bn_variant_cfg", {}).get(implied_bn, {})}
    return details


def card(name: str | os.PathLike) -> str:
    """The model card (README.md) of a checkpoint: fetched and verified, or read from the folder."""
    directory = _local_dir(name)
    if directory is not None:
        return (directory / CARD).read_text()
    entry, implied_bn = resolve(str(name))
    if entry.data.get("kind") == "upstream":
        from . import upstream
        return upstream.card(entry)
    if implied_bn and f"{BN_DIR}/{implied_bn}.md" in entry.files:  # a BN variant's own card, beside its file
        return Path(fetch(entry, f"{BN_DIR}/{implied_bn}.md")).read_text()
    return Path(fetch(entry, CARD)).read_text()


def preprocessing(name: str | os.PathLike) -> dict:
    details = info(name)
    cfg = dict(details["pretrained_cfg"])
    cfg.setdefault("in_chans", cfg.get("input_size", (3,))[0])
    return cfg


def transforms(name: str | os.PathLike, train: bool = False):
    """The torchvision v2 preprocessing the checkpoint expects (size, mean/std, channels)."""
    from torchvision.transforms import v2

    cfg = preprocessing(name)
    channels, height, width = cfg["input_size"]
    interpolation = {"bilinear": v2.InterpolationMode.BILINEAR, "bicubic": v2.InterpolationMode.BICUBIC}.get(
        cfg.get("interpolation", "bilinear"), v2.InterpolationMode.BILINEAR)
    if train:
        geometry = [v2.RandomResizedCrop((height, width), interpolation=interpolation, antialias=True),
                    v2.RandomHorizontalFlip()]
    else:
        resize = int(round(height / cfg.get("crop_pct", 0.875)))
        geometry = [v2.Resize(resize, interpolation=interpolation, antialias=True), v2.CenterCrop((height, width))]
    color = [v2.Grayscale(num_output_channels=1)] if channels == 1 else [v2.RGB()]
    return v2.Compose([v2.ToImage(), *color, *geometry, v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(mean=list(cfg["mean"]), std=list(cfg["std"]))])
