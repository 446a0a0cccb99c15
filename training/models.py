"""Backbones for training: the zoo's architectures (zoo.names.ARCHS), random or from a zoo checkpoint.

`r18c` is ResNet-18 with the CIFAR 3x3 stride-1 stem and no max-pool (zoo.build's
``zoo_stem="cifar"``), the usual choice for 28-64 px images.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from zoo.build import create_model
from zoo.names import ARCH_ALIASES, ARCHS


@dataclass
class Backbone:
    module: nn.Module
    arch: str  # zoo short name (r18, r18c, r50, mnv2)
    timm_arch: str
    model_args: dict
    num_features: int
    init: dict | None = None  # lineage record of the checkpoint it started from


def short_arch(name: str) -> str:
    key = name.lower()
    key = ARCH_ALIASES.get(key, key)
    if key not in ARCHS:
        raise ValueError(f"unknown arch {name!r}; known: {', '.join(ARCHS)} (aliases: {', '.join(ARCH_ALIASES)})")
    return key


def model_args_for(arch: str, in_chans: int) -> dict:
    args = {"zoo_stem": "cifar"} if arch == "r18c" else {}
    if in_chans != 3:
        args["in_chans"] = in_chans
    return args


def build_backbone(arch: str, in_chans: int) -> Backbone:
    arch = short_arch(arch)
    args = model_args_for(arch, in_chans)
    module = create_model(ARCHS[arch], 0, args)
    return Backbone(module, arch, ARCHS[arch], args, int(module.num_features))


def backbone_from_zoo(name: str) -> Backbone:
    """Start from a zoo checkpoint (a published name or an exported folder): weights, arch and
    preprocessing come from it; the caller adds fresh heads."""
    import zoo
    from zoo.integrity import sha256_file
    from zoo.loader import trunk_sha256

    details = zoo.info(name)
    module = zoo.load(name, num_classes=0).train()
    timm_arch = details.get("timm_arch") or details.get("architecture")
    arch = details.get("arch") or short_arch(timm_arch)
    args = dict(details.get("model_args") or {})
    if not args and "path" in details:
        from zoo.checkpoint import CONFIG, read_json
        from pathlib import Path
        args = read_json(Path(details["path"]) / CONFIG).get("model_args", {}) or {}
    sha = trunk_sha256(details)
    if not sha and "path" in details:
        from pathlib import Path
        sha = sha256_file(Path(details["path"]) / "model.safetensors")
    record = {"name": details.get("name", str(name)), "domain": details.get("domain"),
              "method": details.get("method"), "steps": details.get("steps"), "sha256": sha,
              "pretrained_cfg": details.get("pretrained_cfg", {})}
    return Backbone(module, arch, timm_arch, args, int(module.num_features), init=record)


def make_bn_only_trainable(module: nn.Module) -> int:
    """HPT-BN: freeze every parameter except BatchNorm affine ones; BN stays in train mode so its
    running statistics keep adapting. Returns the number of trainable tensors."""
    count = 0
    for layer in module.modules():
        is_bn = isinstance(layer, nn.modules.batchnorm._BatchNorm)
        for param in layer.parameters(recurse=False):
            param.requires_grad_(is_bn)
            count += int(is_bn)
    return count
