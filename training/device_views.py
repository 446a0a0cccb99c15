"""The two-view recipes of views.py, run on a whole batch on the training device (GPU).

On a GPU the per-image CPU pipeline becomes the bottleneck long before the network does. Here
the data loader only decodes and resizes (uint8, one copy per image) and every random operation
runs batched on the device, with per-sample parameters drawn from a generator seeded by
(seed, step) — so a resumed run draws the same views without saving any augmentation state.

Same recipe semantics as views.RECIPES (crop scale and ratio, jitter strengths and probability,
grayscale, blur sigma 0.1-2, flip). Two deliberate differences from torchvision's per-image ops,
documented because results can differ slightly: colour jitter applies brightness, contrast,
saturation, hue in a fixed order (torchvision shuffles it), and hue is rotated in YIQ space
rather than HSV; crops are resampled bilinearly without antialiasing.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from .views import RECIPES, InputSpec, _channel_fix, _interpolation

_GRAY = (0.299, 0.587, 0.114)


def raw_transform(spec: InputSpec) -> v2.Compose:
    """What the loader still does per image: channels and a fixed square size, kept uint8."""
    return v2.Compose([_channel_fix(spec), v2.Resize((spec.image_size, spec.image_size),
                                                     interpolation=_interpolation(spec), antialias=True)])


def _uniform(low, high, count, generator, device):
    return low + (high - low) * torch.rand(count, generator=generator, device=device)


def _coin(p, count, generator, device):
    return torch.rand(count, generator=generator, device=device) < p


def _gray(x: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * weights).sum(1, keepdim=True)


class BatchedViews:
    """Callable: uint8 [B, C, H, W] on any device -> one normalised random view per image."""

    def __init__(self, spec: InputSpec, recipe: str | dict):
        self.spec = spec
        self.params = dict(RECIPES[recipe]) if isinstance(recipe, str) else dict(recipe)
        self.blur_kernel = max(3, int(0.1 * spec.image_size) // 2 * 2 + 1)

    def crop_and_flip(self, x, generator):
        batch, device, size = x.shape[0], x.device, self.spec.image_size
        low, high = self.params["crop_scale"]
        area = _uniform(low, high, batch, generator, device)
        log_ratio = _uniform(math.log(3 / 4), math.log(4 / 3), batch, generator, device)
        ratio = torch.exp(log_ratio)
        width = torch.sqrt(area * ratio).clamp(max=1.0)  # as fractions of the side
        height = torch.sqrt(area / ratio).clamp(max=1.0)
        centre_x = (_uniform(0, 1, batch, generator, device) * 2 - 1) * (1 - width)
        centre_y = (_uniform(0, 1, batch, generator, device) * 2 - 1) * (1 - height)
        flip = torch.where(_coin(self.params["flip_p"], batch, generator, device), -1.0, 1.0)
        theta = torch.zeros(batch, 2, 3, device=device)
        theta[:, 0, 0], theta[:, 0, 2] = width * flip, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = height, centre_y
        grid = F.affine_grid(theta, (batch, x.shape[1], size, size), align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def jitter(self, x, generator):
        batch, device = x.shape[0], x.device
        apply = _coin(self.params["jitter_p"], batch, generator, device).view(-1, 1, 1, 1)
        brightness, contrast, saturation, hue = self.params["jitter"]
        out = x

        def factor(strength):
            return _uniform(max(0.0, 1 - strength), 1 + strength, batch, generator, device).view(-1, 1, 1, 1)

        if brightness:
            out = (out * factor(brightness)).clamp(0, 1)
        gray = _gray(out) if out.shape[1] == 3 else out
        if contrast:
            mean = gray.mean(dim=(1, 2, 3), keepdim=True)
            out = (mean + (out - mean) * factor(contrast)).clamp(0, 1)
        if saturation and out.shape[1] == 3:
            gray = _gray(out)
            out = (gray + (out - gray) * factor(saturation)).clamp(0, 1)
        if hue and out.shape[1] == 3:
            angle = _uniform(-hue, hue, batch, generator, device) * 2 * math.pi
            out = _rotate_hue(out, angle).clamp(0, 1)
        return torch.where(apply, out, x)

    def grayscale(self, x, generator):
        if x.shape[1] != 3 or not self.params["gray_p"]:
            return x
        apply = _coin(self.params["gray_p"], x.shape[0], generator, x.device).view(-1, 1, 1, 1)
        return torch.where(apply, _gray(x).expand_as(x), x)

    def blur(self, x, generator):
        if not self.params["blur_p"]:
            return x
        batch, channels, height, width = x.shape
        apply = _coin(self.params["blur_p"], batch, generator, x.device)
        sigma = _uniform(0.1, 2.0, batch, generator, x.device)
        radius = self.blur_kernel // 2
        offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(offsets.view(1, -1) ** 2) / (2 * sigma.view(-1, 1) ** 2))
        kernel = kernel / kernel.sum(1, keepdim=True)
        kernel = kernel.repeat_interleave(channels, 0)  # one 1-D kernel per (image, channel)
        flat = x.reshape(1, batch * channels, height, width)
        flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(-1, 1, 1, 2 * radius + 1),
                        groups=batch * channels)
        flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(-1, 1, 2 * radius + 1, 1),
                        groups=batch * channels)
        return torch.where(apply.view(-1, 1, 1, 1), flat.view_as(x), x)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = images.float().div_(255)
        x = self.crop_and_flip(x, generator)
        x = self.jitter(x, generator)
        x = self.grayscale(x, generator)
        x = self.blur(x, generator)
        mean = torch.tensor(self.spec.mean, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.spec.std, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate chroma in YIQ space by `angle` radians per image (a cheap stand-in for an HSV hue shift)."""
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]],
                          device=x.device, dtype=x.dtype)
    from_yiq = torch.linalg.inv(to_yiq)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotation = torch.zeros(x.shape[0], 3, 3, device=x.device, dtype=x.dtype)
    rotation[:, 0, 0] = 1
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = from_yiq @ rotation @ to_yiq  # [B, 3, 3]
    return torch.einsum("bij,bjhw->bihw", matrix, x)
