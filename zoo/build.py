"""Build a timm module on the meta device and assign safetensors tensors: no random init, strict keys."""
from __future__ import annotations

import os

import torch
from safetensors.torch import load_file

from .errors import CheckpointFormatError


def create_model(timm_arch: str, num_classes: int, model_args: dict | None = None) -> torch.nn.Module:
    """timm architecture plus the zoo's one extension: ``zoo_stem="cifar"`` (3x3 stride-1 stem, no
    max-pool) for small images, as in the MoCo/SimCLR CIFAR recipes. Honors the current default device."""
    import timm

    args = dict(model_args or {})
    stem = args.pop("zoo_stem", None)
    model = timm.create_model(timm_arch, pretrained=False, num_classes=num_classes, **args)
    if stem == "cifar":
        if not hasattr(model, "conv1") or not hasattr(model, "maxpool"):
            raise CheckpointFormatError(f"zoo_stem='cifar' needs a ResNet, not {timm_arch}")
        model.conv1 = torch.nn.Conv2d(model.conv1.in_channels, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = torch.nn.Identity()
    elif stem is not None:
        raise CheckpointFormatError(f"unknown zoo_stem {stem!r} in model_args (known: 'cifar')")
    return model


def create_on_meta(timm_arch: str, num_classes: int, model_args: dict | None = None) -> torch.nn.Module:
    with torch.device("meta"):
        return create_model(timm_arch, num_classes, model_args)


def describe_key_mismatch(missing, unexpected, limit: int = 8) -> str:
    def show(keys):
        keys = sorted(keys)
        more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    parts = []
    if missing:
        parts.append(f"missing keys: {show(missing)}")
    if unexpected:
        parts.append(f"unexpected keys: {show(unexpected)}")
    return "; ".join(parts)


def assign_strict(model: torch.nn.Module, state_dict: dict, source: str) -> None:
    expected = set(model.state_dict().keys())
    given = set(state_dict.keys())
    if expected != given:
        raise CheckpointFormatError(
            f"{source} does not fit {type(model).__name__}: {describe_key_mismatch(expected - given, given - expected)}")
    model.load_state_dict(state_dict, strict=True, assign=True)
    leftover = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
                if tensor.is_meta]
    if leftover:  # a non-persistent buffer the file cannot carry: refuse rather than leave garbage
        raise CheckpointFormatError(f"{source}: tensors left uninitialised after loading: {leftover[:8]}")


def build_from_file(timm_arch: str, weights_path: str | os.PathLike, num_classes_in_file: int,
                    model_args: dict | None = None) -> torch.nn.Module:
    model = create_on_meta(timm_arch, num_classes_in_file, model_args)
    assign_strict(model, load_file(str(weights_path)), str(weights_path))
    return model


def finish(model: torch.nn.Module, num_classes: int | None, num_classes_in_file: int,
           device=None, dtype=None) -> torch.nn.Module:
    """Adjust the head (None keeps the file's), move, cast, and put in eval mode."""
    if num_classes is not None and num_classes != num_classes_in_file:
        # 0 removes the classifier (a backbone); another count adds a fresh head for fine-tuning.
        model.reset_classifier(num_classes)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model.eval()
