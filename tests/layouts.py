"""Checkpoint files in the key layouts the upstream tools really write (tests build them from timm models).

- facebookresearch/moco ``main_moco.py``: ``{"epoch", "arch", "state_dict", "optimizer"}`` with
  ``module.encoder_q.*`` / ``module.encoder_k.*`` (DDP prefix), ``module.queue``, ``module.queue_ptr``;
  v1's projection is ``fc`` (one Linear), v2's ``fc.0`` / ``fc.2`` (MLP).
- OpenSelfSup (the HPT authors' fork) via mmcv ``save_checkpoint``: ``{"meta", "state_dict", "optimizer"}``,
  no ``module.`` prefix (mmcv unwraps DDP). Its MoCo/BYOL also register ``self.backbone =
  self.encoder_q[0]`` (``online_net[0]``), so ``state_dict()`` holds the backbone twice, under both names.
  Necks: ``NonLinearNeckV1`` = ``mlp.0`` Linear, ``mlp.2`` Linear; BYOL's ``NonLinearNeckSimCLR``-style
  predictor lives in ``head.predictor``.
- ``tools/extract_backbone_weights.py``: ``{"state_dict": {<backbone keys>}, "author": "OpenSelfSup"}``.
- Separius/SimCLRv2-Pytorch ``convert.py``: ``{"resnet": {net.*, fc.*}, "head": {layers.*}}``.
"""
from __future__ import annotations

import re

import torch


def backbone_state(arch: str = "resnet18", seed: int = 0) -> dict:
    """A timm backbone's state dict with every tensor random (BN statistics too, so a swap would show)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(arch, num_classes=0)
    state = {}
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(1000 + seed, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand_like(value) + 0.5
        else:
            state[key] = torch.randn_like(value) * 0.05
    return state


def _neck(prefix: str, features: int, hidden: int = 64, out: int = 16) -> dict:
    return {f"{prefix}mlp.0.weight": torch.randn(hidden, features), f"{prefix}mlp.0.bias": torch.randn(hidden),
            f"{prefix}mlp.2.weight": torch.randn(out, hidden), f"{prefix}mlp.2.bias": torch.randn(out)}


def _mmcv(state: dict, epoch: int = 200) -> dict:
    return {"meta": {"mmcv_version": "0.4.3", "time": "Mon Sep 14 02:33:51 2020", "epoch": epoch, "iter": 1000},
            "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
                                                         "params": [0, 1, 2]}]}}


def _features(backbone: dict) -> int:
    return max(v.shape[0] for k, v in backbone.items() if k.endswith("running_mean"))


def openselfsup_moco(backbone: dict) -> dict:
    features = _features(backbone)
    state = {f"encoder_q.0.{k}": v for k, v in backbone.items()}
    state.update(_neck("encoder_q.1.", features))
    state.update({f"encoder_k.0.{k}": v.clone() + (0.01 if v.is_floating_point() else 0) for k, v in backbone.items()})
    state.update(_neck("encoder_k.1.", features))
    state.update({f"backbone.{k}": v for k, v in backbone.items()})  # the same tensors: self.backbone alias
    state.update(queue=torch.randn(16, 256), queue_ptr=torch.zeros(1, dtype=torch.long))
    return _mmcv(state)


def openselfsup_simclr(backbone: dict) -> dict:
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    state.update(_neck("neck.", _features(backbone)))
    return _mmcv(state)


def openselfsup_byol(backbone: dict) -> dict:
    features = _features(backbone)
    state = {f"online_net.0.{k}": v for k, v in backbone.items()}
    state.update(_neck("online_net.1.", features))
    state.update({f"target_net.0.{k}": v.clone() for k, v in backbone.items()})
    state.update(_neck("target_net.1.", features))
    state.update({f"backbone.{k}": v for k, v in backbone.items()})
    state.update(_neck("head.predictor.", 16, 64, 16))
    return _mmcv(state)


def moco_official(backbone: dict, version: int = 2) -> dict:
    features = _features(backbone)
    state = {f"module.encoder_q.{k}": v for k, v in backbone.items()}
    if version == 1:
        head = {"fc.weight": torch.randn(128, features), "fc.bias": torch.randn(128)}
    else:
        head = {"fc.0.weight": torch.randn(features, features), "fc.0.bias": torch.randn(features),
                "fc.2.weight": torch.randn(128, features), "fc.2.bias": torch.randn(128)}
    state.update({f"module.encoder_q.{k}": v for k, v in head.items()})
    state.update({f"module.encoder_k.{k}": v.clone() for k, v in {**backbone, **head}.items()})
    state.update({"module.queue": torch.randn(128, 256), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    return {"epoch": 200, "arch": "resnet50", "state_dict": state,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.0, "momentum": 0.9, "params": [0, 1]}]}}


_BLOCK = {"conv1": "net.0", "bn1": "net.1.0", "conv2": "net.2", "bn2": "net.3.0", "conv3": "net.4", "bn3": "net.5.0",
          "downsample.0": "projection.shortcut", "downsample.1": "projection.bn.0"}


def simclrv2_pytorch(backbone_with_fc: dict) -> dict:
    """Separius' names for a bottleneck ResNet (net.0 stem, net.1-4 stages, blocks.<i>, projection)."""
    resnet = {}
    for key, value in backbone_with_fc.items():
        module, _, field = key.rpartition(".")
        if module in ("conv1", "bn1"):
            name = {"conv1": "net.0.0", "bn1": "net.0.1.0"}[module]
        elif module == "fc":
            name = "fc"
        else:
            stage, block, part = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", module).groups()
            name = f"net.{stage}.blocks.{block}.{_BLOCK[part]}"
        resnet[f"{name}.{field}"] = value
    head = {"layers.0.weight": torch.randn(8, 8), "layers.1.weight": torch.ones(8), "layers.1.bias": torch.zeros(8)}
    return {"resnet": resnet, "head": head}
