"""Two-view augmentation pipelines (torchvision transforms v2) and the input geometry they target.

`InputSpec` says what the network sees: channels, resolution, mean/std. It comes from the data
domain (zoo.domains) for random init, or from the base checkpoint when training continues from
one, so a gray source fed to an RGB ImageNet base is replicated to 3 channels and normalised with
the base's statistics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torchvision.transforms import v2

# Published recipes. MoCo v2 (ImageNet): crop 0.2-1, jitter (0.4,0.4,0.4,0.1) p=0.8, gray p=0.2,
# blur p=0.5 sigma 0.1-2, flip. SimCLR v2: crop 0.08-1, jitter strength s=1 as (0.8s,0.8s,0.8s,0.2s)
# p=0.8, gray p=0.2, blur p=0.5. "small" variants follow the CIFAR recipes (no blur; SimCLR s=0.5).
RECIPES = {
    "moco": dict(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                 flip_p=0.5),
    "simclr": dict(crop_scale=(0.08, 1.0), jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2, blur_p=0.5,
                   flip_p=0.5),
    "moco_small": dict(crop_scale=(0.2, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=0.0,
                       flip_p=0.5),
    "simclr_small": dict(crop_scale=(0.08, 1.0), jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2,
                         blur_p=0.0, flip_p=0.5),
    "crop_flip": dict(crop_scale=(0.2, 1.0), jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, flip_p=0.5),
}


@dataclass(frozen=True)
class InputSpec:
    channels: int
    image_size: int
    mean: tuple
    std: tuple
    interpolation: str = "bilinear"
    crop_pct: float = 1.0

    def pretrained_cfg(self) -> dict:
        return {"input_size": (self.channels, self.image_size, self.image_size), "mean": tuple(self.mean),
                "std": tuple(self.std), "interpolation": self.interpolation, "crop_pct": self.crop_pct}

    def as_dict(self) -> dict:
        return asdict(self)


def input_spec(domain, channels: str | int = "auto", image_size: int | None = None, base_cfg: dict | None = None,
               crop_pct: float | None = None) -> InputSpec:
    """channels: 'auto' (the base's, else the domain's), 1, or 3 (gray replicated)."""
    if base_cfg:
        base_channels = int(base_cfg["input_size"][0])
        if channels not in ("auto", base_channels):
            raise ValueError(f"the base checkpoint expects {base_channels} channels; channels={channels} conflicts")
        size = image_size or (domain.image_size if domain else int(base_cfg["input_size"][1]))
        return InputSpec(base_channels, size, tuple(base_cfg["mean"]), tuple(base_cfg["std"]),
                         base_cfg.get("interpolation", "bilinear"), crop_pct or float(base_cfg.get("crop_pct", 1.0)))
    if domain is None:
        raise ValueError("no domain: pass --domain (for its mean/std/size) or start from a base checkpoint")
    count = domain.channels if channels == "auto" else int(channels)
    if count not in (1, 3):
        raise ValueError(f"channels must be auto, 1 or 3, not {channels!r}")
    mean, std = tuple(domain.mean), tuple(domain.std)
    if count != len(mean):  # gray stats replicated for 3 channels; RGB stats averaged for 1
        mean = mean * 3 if count == 3 else (sum(mean) / 3,)
        std = std * 3 if count == 3 else (sum(std) / 3,)
    default_crop = 1.0 if domain.group == "offline" else 0.875
    return InputSpec(count, image_size or domain.image_size, mean, std, crop_pct=crop_pct or default_crop)


def _channel_fix(spec: InputSpec):
    if spec.channels == 3:
        return v2.Lambda(lambda x: x.expand(3, -1, -1) if x.shape[0] == 1 else x)
    return v2.Grayscale(num_output_channels=1)


def _interpolation(spec: InputSpec):
    return v2.InterpolationMode.BICUBIC if spec.interpolation == "bicubic" else v2.InterpolationMode.BILINEAR


def view_transform(spec: InputSpec, recipe: str | dict) -> v2.Compose:
    """One random view: uint8 [C,H,W] -> normalised float [spec.channels, size, size]."""
    params = dict(RECIPES[recipe]) if isinstance(recipe, str) else dict(recipe)
    size = spec.image_size
    blur_kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # ~10% of the side, odd, as in SimCLR
    steps = [_channel_fix(spec),
             v2.RandomResizedCrop(size, scale=tuple(params["crop_scale"]), interpolation=_interpolation(spec),
                                  antialias=True)]
    if params["jitter_p"] > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(*params["jitter"])], p=params["jitter_p"]))
    if params["gray_p"] > 0 and spec.channels == 3:
        steps.append(v2.RandomGrayscale(p=params["gray_p"]))
    if params["blur_p"] > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))], p=params["blur_p"]))
    if params["flip_p"] > 0:
        steps.append(v2.RandomHorizontalFlip(p=params["flip_p"]))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(spec.mean), list(spec.std))]
    return v2.Compose(steps)


def eval_transform(spec: InputSpec) -> v2.Compose:
    """Deterministic: resize (shorter side to size/crop_pct), center crop, normalise."""
    size = spec.image_size
    resize = int(round(size / spec.crop_pct))
    return v2.Compose([_channel_fix(spec), v2.Resize(resize, interpolation=_interpolation(spec), antialias=True),
                       v2.CenterCrop(size), v2.ToDtype(torch.float32, scale=True),
                       v2.Normalize(list(spec.mean), list(spec.std))])
