"""The public entry points: name -> catalog entry -> verified files -> module (+ BN overlay)."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from . import build
from .bn import apply_bn
from .catalog import Entry, check_variant, resolve
from .checkpoint import BN_DIR, CARD, CONFIG, META, WEIGHTS, is_checkpoint_dir, is_overlay_dir, read_json
from .errors import CheckpointFormatError, IncompatibleOverlayError, UnknownVariantError, close_matches
from .fetch import fetch
from .integrity import require_verified


def _local_dir(name) -> Path | None:
    if isinstance(name, os.PathLike) or (isinstance(name, str) and (os.sep in name or name.startswith(".")
                                                                    or os.path.isdir(name))):
        path = Path(name)
        if not is_checkpoint_dir(path):
            raise CheckpointFormatError(f"{path} is not a zoo checkpoint folder (needs {CONFIG} and {WEIGHTS}); "
                                        f"export one with training's export or `zoo convert`")
        return path
    return None


def _local_overlay(directory: Path, meta: dict, bn: str) -> Path:
    available = meta.get("bn_variants", [])
    if bn not in available:
        near = close_matches(bn, available)
        raise UnknownVariantError(f"{directory} has no BN variant {bn!r}; available: {', '.join(available) or 'none'}."
                                  + (f" Did you mean {', '.join(near)}?" if near else ""))
    return directory / BN_DIR / f"{bn}.safetensors"


def _load_overlay_dir(directory: Path, bn, num_classes, device, dtype) -> torch.nn.Module:
    """Trunk (by name or folder, checked by sha256) + this folder's overlay."""
    meta = read_json(directory / META)
    variant = bn or meta["default_bn"]
    overlay = _local_overlay(directory, meta, variant)
    record = meta["weights"][f"{BN_DIR}/{variant}.safetensors"]
    require_verified(overlay, record["sha256"], record["size"], "BN overlay", "The file changed; re-create it.")
    trunk = meta["trunk"]["name"]
    if not os.path.isabs(trunk) and (directory / trunk).exists():
        trunk = str(directory / trunk)  # a trunk folder given relative to this folder
    actual = _trunk_sha(trunk)
    if actual != meta["trunk_sha256"]:
        raise IncompatibleOverlayError(f"{directory} was made for trunk {trunk} with sha256 {meta['trunk_sha256'][:12]}..., "
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


def _load_local(directory: Path, bn, num_classes, device, dtype) -> torch.nn.Module:
    if is_overlay_dir(directory):
        return _load_overlay_dir(directory, bn, num_classes, device, dtype)
    config = read_json(directory / CONFIG)
    meta = read_json(directory / META) if (directory / META).exists() else {}
    record = meta.get("weights", {}).get(WEIGHTS)
    if record:  # exported folders carry their own hashes: a changed file is caught
        require_verified(directory / WEIGHTS, record["sha256"], record["size"], "local checkpoint",
                         "The file changed after export; re-export it.")
    file_classes = int(config.get("num_classes", 0))
    model = build.build_from_file(config["architecture"], directory / WEIGHTS, file_classes, config.get("model_args"))
    if bn:
        apply_bn(model, _local_overlay(directory, meta, bn), meta.get("trunk_sha256"))
    return build.finish(model, num_classes, file_classes, device, dtype)


def load(name: str | os.PathLike, *, bn: str | None = None, revision: str | None = None,
         num_classes: int | None = 0, device=None, dtype=None) -> torch.nn.Module:
    """A ready module (eval mode) for a published name or a local checkpoint folder.

    bn: a BN-statistic variant (``zoo.info(name)["bn_variants"]``). num_classes: 0 = backbone
    (pooled features), None = keep the checkpoint's own classifier, N = a fresh N-way head.
    revision: another published revision of the same repo; its files are then checked against
    that revision's own zoo.json instead of the catalog.
    """
    directory = _local_dir(name)
    if directory is not None:
        return _load_local(directory, bn, num_classes, device, dtype)
    entry, implied_bn = resolve(str(name))
    if entry.data.get("kind") == "upstream":  # a publisher's file, converted into the zoo cache on first use
        from . import upstream
        return upstream.load(entry, bn=bn, revision=revision, num_classes=num_classes, device=device, dtype=dtype)
    if implied_bn and bn and implied_bn != bn:
        raise UnknownVariantError(f"{name} already means BN variant {implied_bn!r}; do not also pass bn={bn!r}")
    bn = bn or implied_bn
    variant = check_variant(entry, bn) if bn else None
    files = _file_records(entry, revision)
    weights = fetch(entry, WEIGHTS, revision, files[WEIGHTS])
    file_classes = int(entry.num_classes)
    model = build.build_from_file(entry.timm_arch, weights, file_classes, entry.data.get("model_args"))
    if variant:
        overlay_name = f"{BN_DIR}/{variant}.safetensors"
        apply_bn(model, fetch(entry, overlay_name, revision, files[overlay_name]), files[WEIGHTS]["sha256"])
    return build.finish(model, num_classes, file_classes, device, dtype)


def _file_records(entry: Entry, revision: str | None) -> dict:
    if revision is None or revision == entry.revision:
        return entry.files
    from huggingface_hub import hf_hub_download

    meta = read_json(Path(hf_hub_download(entry.repo_id, META, revision=revision)))
    return meta["weights"]


def info(name: str | os.PathLike) -> dict:
    """Everything known about a checkpoint without downloading weights."""
    directory = _local_dir(name)
    if directory is not None and is_overlay_dir(directory):
        meta = read_json(directory / META)
        trunk = info(meta["trunk"]["name"])
        return {**meta, "path": str(directory), "pretrained_cfg": trunk.get("pretrained_cfg", {}),
                "timm_arch": trunk.get("timm_arch")}
    if directory is not None:
        meta = read_json(directory / META)
        config = read_json(directory / CONFIG)
        return {"name": meta.get("name", str(directory)), "path": str(directory), **meta,
                "pretrained_cfg": config.get("pretrained_cfg", {}), "timm_arch": config["architecture"]}
    entry, implied_bn = resolve(str(name))
    details = {"name": entry.name, **entry.data}
    if entry.data.get("kind") == "upstream":
        from . import upstream
        details.update(upstream.converted_details(entry))
    details["terms"] = data_terms(details)
    if implied_bn:
        details.update(name=str(name), bn_variant=implied_bn, strategy="base", trunk=entry.name)
    return details


def data_terms(details: dict) -> dict:
    """Usage terms of every dataset in the checkpoint's lineage and BN variants (from the domain registry)."""
    from .domains import DOMAINS

    names = [step.get("domain") for step in details.get("lineage", [])] + [details.get("domain")]
    names += list(details.get("bn_variants", []))
    return {name: DOMAINS[name].terms for name in dict.fromkeys(names) if name in DOMAINS}


def card(name: str | os.PathLike) -> str:
    """The model card (README.md) of a checkpoint: fetched and verified, or read from the folder."""
    directory = _local_dir(name)
    if directory is not None:
        return (directory / CARD).read_text()
    entry, _ = resolve(str(name))
    if entry.data.get("kind") == "upstream":
        from . import upstream
        return upstream.card(entry)
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
