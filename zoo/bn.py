"""BatchNorm-statistic overlays: one trunk file, small per-domain files of BN tensors.

An overlay holds every BN layer's running mean/var (kind "stats") and, for HPT-BN, also the BN
affine weight/bias (kind "stats+affine"). Its safetensors metadata records the sha256 of the
trunk it was made for, and applying it to any other trunk is refused.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .checkpoint import save_state_dict
from .errors import CheckpointFormatError, IncompatibleOverlayError

STATS = ("running_mean", "running_var", "num_batches_tracked")
AFFINE = ("weight", "bias")


def bn_modules(model: torch.nn.Module):
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            yield name, module


def bn_keys(model: torch.nn.Module, affine: bool = False) -> list[str]:
    fields = STATS + (AFFINE if affine else ())
    keys = []
    for name, module in bn_modules(model):
        for field in fields:
            if getattr(module, field, None) is not None:
                keys.append(f"{name}.{field}" if name else field)
    return keys


def extract_bn(model: torch.nn.Module, path: str | os.PathLike | None = None, *, trunk_sha256: str = "",
               domain: str = "", affine: bool = False) -> dict[str, torch.Tensor]:
    """The model's BN tensors as an overlay; written to `path` (safetensors) when given."""
    state = model.state_dict()
    overlay = {key: state[key] for key in bn_keys(model, affine)}
    if not overlay:
        raise CheckpointFormatError(f"{type(model).__name__} has no BatchNorm layers: nothing to extract")
    if path is not None:
        if not trunk_sha256:
            raise ValueError("trunk_sha256 is required to save an overlay (it binds the overlay to its trunk)")
        save_state_dict(overlay, path, {"zoo_overlay": "1", "trunk_sha256": trunk_sha256, "domain": domain,
                                        "kind": "stats+affine" if affine else "stats"})
    return overlay


def overlay_metadata(path: str | os.PathLike) -> dict:
    try:
        with safe_open(str(path), framework="pt") as handle:
            return handle.metadata() or {}
    except SafetensorError as error:
        raise CheckpointFormatError(f"{os.path.basename(str(path))} is not a readable safetensors file ({error})") from None


def apply_bn(model: torch.nn.Module, path: str | os.PathLike, trunk_sha256: str | None) -> torch.nn.Module:
    """Apply an overlay file in place after checking it belongs to this trunk and fits exactly."""
    metadata = overlay_metadata(path)
    if metadata.get("zoo_overlay") != "1":
        raise CheckpointFormatError(f"{path} is not a zoo BN overlay (no zoo_overlay metadata)")
    made_for = metadata.get("trunk_sha256", "")
    if trunk_sha256 is not None and made_for != trunk_sha256:
        raise IncompatibleOverlayError(
            f"BN overlay {os.path.basename(path)} was made for trunk {made_for[:12]}..., not for this trunk "
            f"{trunk_sha256[:12]}...; recompute it with zoo.recalibrate_bn + zoo.extract_bn on this model")
    try:
        overlay = load_file(str(path))
    except SafetensorError as error:
        raise CheckpointFormatError(f"BN overlay {os.path.basename(str(path))} cannot be read ({error})") from None
    expected = set(bn_keys(model, affine=metadata.get("kind") == "stats+affine"))
    if set(overlay) != expected:
        from .build import describe_key_mismatch
        raise CheckpointFormatError(f"BN overlay {path} does not fit: "
                                    f"{describe_key_mismatch(expected - set(overlay), set(overlay) - expected)}")
    state = model.state_dict()
    _check_overlay_values(overlay, state, path)
    with torch.no_grad():
        for key, value in overlay.items():
            state[key].copy_(value)
    return model


def _check_overlay_values(overlay: dict, state: dict, path) -> None:
    """Every tensor must have the model's shape exactly (copy_ would broadcast a [1] tensor silently),
    be finite, and be a valid statistic: a variance below zero or a negative batch count is refused."""
    name = os.path.basename(str(path))
    for key, value in sorted(overlay.items()):
        target = state[key]
        if tuple(value.shape) != tuple(target.shape):
            raise CheckpointFormatError(f"BN overlay {name}: {key} has shape {list(value.shape)}, the model's has "
                                        f"{list(target.shape)}; the overlay was made for another architecture")
        if value.is_floating_point() != target.is_floating_point():
            raise CheckpointFormatError(f"BN overlay {name}: {key} is {value.dtype}, the model's is {target.dtype}")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointFormatError(f"BN overlay {name}: {key} has NaN or infinite values")
        if key.endswith(("running_var", "num_batches_tracked")) and bool((value < 0).any()):
            raise CheckpointFormatError(f"BN overlay {name}: {key} has negative values (a variance or count "
                                        f"cannot be negative); recompute the overlay with zoo.recalibrate_bn")


def _images(batch):
    if isinstance(batch, dict):
        return batch.get("image", batch.get("pixel_values"))
    if isinstance(batch, (tuple, list)):
        return batch[0]
    return batch


@torch.no_grad()
def recalibrate_bn(model: torch.nn.Module, batches: Iterable, max_batches: int | None = None) -> torch.nn.Module:
    """Re-estimate every BN layer's running mean/var on `batches`, weights frozen.

    The forward passes run with BN in train mode (batch statistics normalise, as in the HPT
    study's BN adaptation) while hooks accumulate, in float64, the exact per-channel mean and
    unbiased variance of each BN layer's input over *all* the data; those become the running
    statistics. This is the cumulative average (momentum=None) done exactly, also for unequal
    batch sizes. Other layers (dropout) stay in eval mode. Returns the model in eval mode.
    """
    layers = dict(bn_modules(model))
    if not layers:
        raise CheckpointFormatError(f"{type(model).__name__} has no BatchNorm layers to recalibrate")
    sums = {name: None for name in layers}

    def make_hook(name):
        def hook(module, inputs):
            x = inputs[0].detach().to(torch.float64)
            dims = [0] + list(range(2, x.dim()))
            total = (x.sum(dims), (x * x).sum(dims), x.numel() // x.shape[1])
            previous = sums[name]
            sums[name] = total if previous is None else tuple(a + b for a, b in zip(previous, total))
        return hook

    handles = [module.register_forward_pre_hook(make_hook(name)) for name, module in layers.items()]
    device = next(model.parameters()).device
    model.eval()
    for module in layers.values():
        module.train()
    seen_batches = 0
    try:
        for batch in batches:
            if max_batches is not None and seen_batches >= max_batches:
                break
            model(_images(batch).to(device))
            seen_batches += 1
    finally:
        for handle in handles:
            handle.remove()
        model.eval()
    for name, module in layers.items():
        if sums[name] is None:
            raise ValueError("recalibrate_bn got no batches")
        total, total_sq, count = sums[name]
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0) * (count / max(count - 1, 1))
        module.running_mean.copy_(mean.to(module.running_mean.dtype))
        module.running_var.copy_(var.to(module.running_var.dtype))
        if module.num_batches_tracked is not None:
            module.num_batches_tracked.fill_(seen_batches)
    return model
