"""The one checkpoint format: a training export, a Hub repo, a mirror repo and a local folder are alike.

    config.json               timm-compatible (architecture, num_classes, num_features, pretrained_cfg)
    model.safetensors         the trunk (backbone; a classifier only when the model has one)
    bn/<domain>.safetensors   BN-statistic overlays, each recording the sha256 of its trunk
    zoo.json                  method, strategy, lineage, steps, hyperparameters, data, evaluations
    README.md                 the model card, generated from zoo.json

Folders are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written checkpoint that looks complete.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import save_file

from .errors import CheckpointFormatError
from .integrity import sha256_file

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
META = "zoo.json"
CARD = "README.md"
BN_DIR = "bn"


def dump_json(data) -> str:
    # sorted keys + fixed separators: identical inputs give identical bytes (and git commits)
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def timm_config(timm_arch: str, num_classes: int, num_features: int, pretrained_cfg: dict,
                model_args: dict | None = None) -> dict:
    config = {
        "architecture": timm_arch,
        "num_classes": num_classes,
        "num_features": num_features,
        "pretrained_cfg": {**pretrained_cfg, "num_classes": num_classes},
    }
    if model_args:
        config["model_args"] = model_args
    return config


def save_state_dict(state_dict: dict, path: str | os.PathLike, metadata: dict | None = None) -> None:
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    save_file(tensors, str(path), metadata={"format": "pt", **(metadata or {})})


def file_record(path: str | os.PathLike) -> dict:
    return {"sha256": sha256_file(path), "size": os.path.getsize(path)}


@contextlib.contextmanager
def atomic_folder(directory: str | os.PathLike):
    """Yield a staging folder that becomes `directory` only if the block completes."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointFormatError(f"{directory} already exists and is not empty; choose a new folder or delete it")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        yield staging
        _normalise_permissions(staging)
        if directory.exists():
            directory.rmdir()
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_checkpoint(directory: str | os.PathLike, state_dict: dict, config: dict, meta: dict,
                     overlays: dict[str, str | os.PathLike] | None = None, card: str | None = None) -> Path:
    """Write a complete checkpoint folder atomically and return its path.

    `overlays` maps a domain to an existing overlay file to copy under bn/. The card is generated
    from the final zoo.json (with file hashes) unless given.
    """
    with atomic_folder(directory) as staging:
        save_state_dict(state_dict, staging / WEIGHTS)
        (staging / CONFIG).write_text(dump_json(config))
        # config.json decides the network (architecture, model_args): hashed like the weights
        files = {WEIGHTS: file_record(staging / WEIGHTS), CONFIG: file_record(staging / CONFIG)}
        for domain, source in sorted((overlays or {}).items()):
            (staging / BN_DIR).mkdir(exist_ok=True)
            target = staging / BN_DIR / f"{domain}.safetensors"
            shutil.copyfile(source, target)
            files[f"{BN_DIR}/{domain}.safetensors"] = file_record(target)
        meta = {**meta, "format_version": FORMAT_VERSION, "trunk_sha256": files[WEIGHTS]["sha256"],
                "bn_variants": sorted((overlays or {}).keys()), "weights": files}
        (staging / META).write_text(dump_json(meta))
        if card is None:
            from .cards import render_card
            card = render_card(meta, config)
        (staging / CARD).write_text(card)
    return Path(directory)


def _normalise_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders; give the checkpoint the permissions a normal folder would have."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [folder, *folder.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointFormatError(f"{path} is missing: not a zoo checkpoint folder "
                                    f"(expected {CONFIG}, {WEIGHTS}, {META})") from None
    except ValueError as error:
        raise CheckpointFormatError(f"{path} is not valid JSON: {error}") from None


def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    path = Path(path)
    return path.is_dir() and (((path / CONFIG).exists() and (path / WEIGHTS).exists()) or is_overlay_dir(path))


def is_overlay_dir(path: str | os.PathLike) -> bool:
    """An overlay-only folder (Base / HPT-BN strategies): zoo.json naming its trunk + bn/<domain>.safetensors."""
    path = Path(path)
    if not (path / META).exists() or (path / WEIGHTS).exists():
        return False
    try:
        return "trunk" in json.loads((path / META).read_text())
    except ValueError:
        return False


def write_overlay_checkpoint(directory: str | os.PathLike, overlay_file: str | os.PathLike, domain: str,
                             trunk: dict, meta: dict) -> Path:
    """An overlay-only checkpoint: no copy of the trunk, just the overlay and what it applies to.

    `trunk` = {"name": zoo name or folder, "sha256": the trunk file's sha256}. Written atomically.
    """
    with atomic_folder(directory) as staging:
        (staging / BN_DIR).mkdir()
        target = staging / BN_DIR / f"{domain}.safetensors"
        shutil.copyfile(overlay_file, target)
        meta = {**meta, "format_version": FORMAT_VERSION, "trunk": trunk, "trunk_sha256": trunk["sha256"],
                "bn_variants": [domain], "default_bn": domain,
                "weights": {f"{BN_DIR}/{domain}.safetensors": file_record(target)}}
        (staging / META).write_text(dump_json(meta))
        from .cards import render_card
        (staging / CARD).write_text(render_card(meta, {"architecture": meta.get("timm_arch", ""),
                                                       "pretrained_cfg": meta.get("pretrained_cfg", {})}))
    return Path(directory)
