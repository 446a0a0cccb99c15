"""Import foreign checkpoints into the zoo format — reading pickles with weights_only=True only.

Handled layouts:
- MoCo ``.pth.tar``: ``{"state_dict": {"module.encoder_q.*"}}``; the key encoder, queue and the
  ``fc`` projection head are dropped (they are training state, not the backbone).
- OpenSelfSup / HPT backbone pickles: ``{"state_dict": {"backbone.*"}}`` (or already stripped).
- torchvision state dicts: keys mapped onto the timm architecture by module order, checking that
  every pair has the same shape and the same field (weight/bias/running_mean/...).
Every path ends in a strict load into the timm model; nothing is skipped silently.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .build import create_on_meta, describe_key_mismatch
from .checkpoint import timm_config, write_checkpoint
from .errors import CheckpointFormatError, UnsafeCheckpointError
from .integrity import sha256_file

_DROP_PREFIXES = ("encoder_k.", "module.encoder_k.", "queue", "module.queue")
_STRIP_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.backbone.", "backbone.", "module.")


def read_pickle_safely(path: str | os.PathLike) -> dict:
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} is a pickle that needs to run code to load (refused; weights_only=True): {str(error)[:300]}. "
            f"Re-save it as a plain state dict of tensors (torch.save(model.state_dict(), ...)) in a trusted "
            f"environment, then convert that.") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise CheckpointFormatError(f"cannot read {path} as a PyTorch checkpoint: {error}") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} holds a {type(data).__name__}, not a state dict")
    return data


def detect_layout(data: dict) -> str:
    state = data.get("state_dict", data)
    keys = list(state)
    if any(k.startswith(("module.encoder_q.", "encoder_q.")) for k in keys):
        return "moco"
    if any(k.startswith(("backbone.", "module.backbone.")) for k in keys) or "state_dict" in data:
        return "openselfsup"
    return "plain"


def extract_backbone(data: dict, layout: str) -> dict:
    state = data.get("state_dict", data)
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or key.startswith(_DROP_PREFIXES):
            continue
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if layout == "moco" and key.startswith("fc."):
            continue  # MoCo's MLP projection head, not part of the backbone
        tensors[key] = value
    return tensors


def map_onto(model: torch.nn.Module, tensors: dict, source: str) -> dict:
    """Rename `tensors` to `model`'s keys: identical names first, else by order with shape+field checks."""
    target = model.state_dict()
    if set(tensors) == set(target):
        return tensors
    if set(tensors) <= set(target) or len(tensors) != len(target):
        missing, unexpected = set(target) - set(tensors), set(tensors) - set(target)
        raise CheckpointFormatError(f"{source} does not fit {type(model).__name__}: "
                                    f"{describe_key_mismatch(missing, unexpected)}")
    mapped = {}
    for (source_key, value), (target_key, reference) in zip(tensors.items(), target.items()):
        if value.shape != reference.shape or source_key.rsplit(".", 1)[-1] != target_key.rsplit(".", 1)[-1]:
            raise CheckpointFormatError(
                f"{source}: cannot map {source_key} {tuple(value.shape)} onto {target_key} {tuple(reference.shape)}; "
                f"the architectures differ (pick another --arch)")
        mapped[target_key] = value
    return mapped


def convert(source: str | os.PathLike, output: str | os.PathLike, *, timm_arch: str, name: str,
            meta: dict | None = None, pretrained_cfg: dict | None = None, keep_classifier: bool | None = None,
            model_args: dict | None = None) -> Path:
    """Convert a foreign checkpoint file into a zoo checkpoint folder; returns the folder."""
    data = read_pickle_safely(source)
    layout = detect_layout(data)
    tensors = extract_backbone(data, layout)
    head_classes = 0
    model = create_on_meta(timm_arch, 0, model_args)
    classifier_keys = set(create_on_meta(timm_arch, 1000, model_args).state_dict()) - set(model.state_dict())
    if len(tensors) == len(model.state_dict()) + len(classifier_keys):  # the file has a classifier
        if keep_classifier is False:
            tensors = dict(list(tensors.items())[:-len(classifier_keys)])
        else:
            head_classes = int(list(tensors.values())[-len(classifier_keys)].shape[0])
            model = create_on_meta(timm_arch, head_classes, model_args)
    mapped = map_onto(model, tensors, str(source))
    import timm

    cfg = {key: value for key, value in timm.get_pretrained_cfg(timm_arch).to_dict().items()
           if key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv",
                      "classifier", "pool_size")}
    cfg.update(pretrained_cfg or {})
    config = timm_config(timm_arch, head_classes, int(model.num_features), cfg, model_args)
    source_record = {"file": os.path.basename(str(source)), "sha256": sha256_file(source), "layout": layout}
    meta = {"name": name, "source_checkpoint": source_record, **(meta or {})}
    return write_checkpoint(output, mapped, config, meta)
