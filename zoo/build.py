"""Build a timm module on the meta device and assign safetensors tensors: no random init, strict keys."""
from __future__ import annotations

import os

import torch
from safetensors import SafetensorError
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
        for stage in getattr(model, "feature_info", []):  # both stride-2 ops are gone: 4x less reduction
            stage["reduction"] = max(1, stage["reduction"] // 4)
    elif stem is not None:
        raise CheckpointFormatError(f"unknown zoo_stem {stem!r} in model_args (known: 'cifar')")
    return model


# In-place ops that only change values (never shape): on a meta tensor they are pure overhead, and
# weight-init code calls hundreds of them (a third of a timm build's time goes to init on meta).
_VALUE_ONLY_INPLACE = {getattr(torch.Tensor, name) for name in (
    "normal_", "uniform_", "fill_", "zero_", "erfinv_", "mul_", "add_", "sub_", "div_", "clamp_", "clamp_min_",
    "clamp_max_", "copy_", "exponential_", "random_", "bernoulli_", "log_normal_", "sqrt_", "exp_", "neg_")}
_VALUE_ONLY_INPLACE |= {getattr(torch.nn.init, name) for name in (
    "normal_", "uniform_", "trunc_normal_", "kaiming_normal_", "kaiming_uniform_", "xavier_normal_",
    "xavier_uniform_", "zeros_", "ones_", "constant_", "orthogonal_", "eye_", "dirac_")}


class _SkipInitOnMeta(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _VALUE_ONLY_INPLACE:
            target = args[0] if args else kwargs.get("tensor")  # nn.init passes tensor= by keyword
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def create_on_meta(timm_arch: str, num_classes: int, model_args: dict | None = None) -> torch.nn.Module:
    """The architecture with every tensor on the meta device: no memory, no random init."""
    with torch.device("meta"), _SkipInitOnMeta():
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
    try:
        model.load_state_dict(state_dict, strict=True, assign=True)
    except RuntimeError as error:  # same keys, other shapes
        raise CheckpointFormatError(f"{source} does not fit {type(model).__name__}: {str(error)[:400]}") from None
    leftover = [name for name, tensor in list(model.named_parameters()) + list(model.named_buffers())
                if tensor.is_meta]
    if leftover:  # a non-persistent buffer the file cannot carry: refuse rather than leave garbage
        raise CheckpointFormatError(f"{source}: tensors left uninitialised after loading: {leftover[:8]}")


def build_from_file(timm_arch: str, weights_path: str | os.PathLike, num_classes_in_file: int,
                    model_args: dict | None = None) -> torch.nn.Module:
    try:
        model = create_on_meta(timm_arch, num_classes_in_file, model_args)
    except RuntimeError as error:  # timm: "Unknown model (...)"
        raise CheckpointFormatError(f"{weights_path}: cannot build architecture {timm_arch!r}: {error}") from None
    except TypeError as error:  # a model_args key the architecture does not take
        raise CheckpointFormatError(f"{weights_path}: model_args do not fit {timm_arch!r}: {error}") from None
    try:
        state_dict = load_file(str(weights_path))
    except SafetensorError as error:
        raise CheckpointFormatError(f"{weights_path} is not a readable safetensors file ({error})") from None
    assign_strict(model, state_dict, str(weights_path))
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
