"""Two-view augmentation straight from encoded image bytes (the prepared format's rows), on the CPU.

The same recipe as views.RECIPES (MoCo v2 / SimCLR: random-resized crop, colour jitter, grayscale,
blur, flip), done the way the HPT study's OpenSelfSup pipeline did it -- PIL operations, with PIL's
`ImageFilter.GaussianBlur(radius=sigma)` -- plus one saving that changes no distribution: the crop
parameters of both views are drawn *before* decoding, and a JPEG is decoded at the coarsest DCT scale
(PIL's `draft`, 1/2, 1/4, 1/8) at which both crops still have at least the output resolution. A
1280x720 frame cropped to 224 px never needs its full-resolution pixels. Crop + resize is one PIL
call (antialiased), on the decoded mode (a grayscale X-ray stays one band through every op and is
replicated to RGB only as the output tensor).
Random numbers come from torch's generator, so StepBatches' per-image seeding
makes views reproducible exactly as with views.view_transform.

benchmarks/data_pipeline.py measures it against torchvision ImageFolder + DataLoader.
"""
from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision.transforms import v2

from .views import RECIPES, InputSpec

_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


_IDENTITY = list(range(256))


def blend_table(constant: int, factor: float) -> list[int]:
    """`Image.blend(constant image, image, factor)` as a 256-entry table: the same float32 arithmetic and
    truncation (or clipping, when extrapolating) as Pillow's C loop, so `image.point(table)` gives the
    very pixels ImageEnhance's Brightness (constant 0) and Contrast (constant = the gray mean) give."""
    values = np.arange(256, dtype=np.float32)
    blended = np.float32(constant) + np.float32(factor) * (values - np.float32(constant))
    return np.clip(blended, 0, 255).astype(np.uint8).tolist()


def _point(image: Image.Image, table: list[int]) -> Image.Image:
    """`image.point(table)` for an 8-bit image and an integer table, without Image.point's per-entry
    `round()` in Python (a third of the op's cost at 224 px)."""
    return image._new(image.im.point(table, None))


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand(()))


def crop_params(width: int, height: int, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) with torchvision RandomResizedCrop's distribution (10 tries, then a centre crop)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(*scale)
        aspect = math.exp(_uniform(*log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)))
            left = int(torch.randint(0, width - w + 1, (1,)))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cpu_views(source, spec: InputSpec, recipe):
    """The CPU loader's augmentation for `source`: EncodedViews for a prepared (Arrow) set that is not
    held decoded in memory, views.view_transform otherwise."""
    from .views import view_transform

    if getattr(source, "_array", None) is None and hasattr(getattr(source, "_reader", None), "encoded"):
        return EncodedViews(spec, recipe)
    return view_transform(spec, recipe)


class EncodedViews:
    """Callable: encoded bytes -> `views` normalised float tensors [spec.channels, size, size]."""

    takes_encoded = True  # StepBatches hands it the image's encoded bytes, not a decoded tensor

    def __init__(self, spec: InputSpec, recipe: str | dict = "moco"):
        self.spec = spec
        self.params = dict(RECIPES[recipe]) if isinstance(recipe, str) else dict(recipe)
        jitter = self.params["jitter"]
        self.jitter = v2.ColorJitter(*jitter) if self.params["jitter_p"] > 0 else None
        self.resample = _RESAMPLE.get(spec.interpolation, Image.BILINEAR)
        self.mode = "L" if spec.channels == 1 else "RGB"
        self.mean = torch.tensor(spec.mean, dtype=torch.float32).view(-1, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(spec.std, dtype=torch.float32).view(-1, 1, 1) * 255.0)

    def __call__(self, encoded, views: int = 2) -> list[torch.Tensor]:
        data = encoded.tobytes() if isinstance(encoded, np.ndarray) else bytes(encoded)
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            boxes = [crop_params(width, height, tuple(self.params["crop_scale"])) for _ in range(views)]
            size = self.spec.image_size
            smallest = min(min(h, w) for _, _, h, w in boxes)
            reduce = 1
            while reduce < 8 and smallest / (2 * reduce) >= size:
                reduce *= 2
            if reduce > 1 and image.format == "JPEG":
                image.draft(image.mode if image.mode in ("L", "RGB") else "RGB",
                            (math.ceil(width / reduce), math.ceil(height / reduce)))
            scale_x, scale_y = image.size[0] / width, image.size[1] / height
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            if self.mode == "L" and image.mode == "RGB":
                image = image.convert("L")
        return [self._view(image, (left * scale_x, top * scale_y, (left + w) * scale_x, (top + h) * scale_y))
                for top, left, h, w in boxes]

    def _jitter(self, view: Image.Image) -> Image.Image:
        """torchvision's ColorJitter on a PIL image: the same factor distributions, random order and
        pixels, in fewer passes. Brightness and contrast blend with a constant image, so they are one
        lookup table each (`blend_table`, bit-identical to ImageEnhance); hue shifts the H band of one
        HSV image by a table. A gray view (a gray source for an RGB network, replicated only at the end)
        has no saturation or hue to change: blending a gray image with its own gray is the identity."""
        from PIL import ImageEnhance, ImageStat

        brightness, contrast, saturation, hue = self.params["jitter"]
        draws = torch.rand(4).tolist()
        for op in torch.randperm(4).tolist():
            if op == 0 and brightness > 0:
                view = _point(view, blend_table(0, 1 - brightness + 2 * brightness * draws[0]) * len(view.getbands()))
            elif op == 1 and contrast > 0:
                gray = view if view.mode == "L" else view.convert("L")
                mean = int(ImageStat.Stat(gray).mean[0] + 0.5)
                view = _point(view, blend_table(mean, 1 - contrast + 2 * contrast * draws[1]) * len(view.getbands()))
            elif op == 2 and saturation > 0 and view.mode == "RGB":
                view = ImageEnhance.Color(view).enhance(1 - saturation + 2 * saturation * draws[2])
            elif op == 3 and hue > 0 and view.mode == "RGB":
                shift = int(np.int32((-hue + 2 * hue * draws[3]) * 255).astype(np.uint8))
                # uint8 wrap-around = rotation of the hue circle, as torchvision does
                rotate = _IDENTITY[shift:] + _IDENTITY[:shift]  # v -> (v + shift) mod 256
                view = _point(view.convert("HSV"), rotate + _IDENTITY + _IDENTITY).convert("RGB")
        return view

    def _view(self, image: Image.Image, box) -> torch.Tensor:
        size, p = self.spec.image_size, self.params
        # reducing_gap: an integer box-reduce first when shrinking by >= 3x (PIL: "indistinguishable from
        # fair resampling in most cases"), then the antialiased resample
        view = image.resize((size, size), self.resample, box=box, reducing_gap=3.0)
        # a gray source for an RGB network stays one band through the ops (each acts on R=G=B alike)
        # and is replicated to three only as a tensor at the end
        if self.jitter is not None and float(torch.rand(())) < p["jitter_p"]:
            view = self._jitter(view)
        if p["gray_p"] > 0 and self.mode == "RGB" and float(torch.rand(())) < p["gray_p"] and view.mode == "RGB":
            view = view.convert("L").convert("RGB")
        if p["blur_p"] > 0 and float(torch.rand(())) < p["blur_p"]:
            view = view.filter(ImageFilter.GaussianBlur(radius=_uniform(0.1, 2.0)))
        if p["flip_p"] > 0 and float(torch.rand(())) < p["flip_p"]:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(view, dtype=np.uint8))
        pixels = pixels[None] if pixels.ndim == 2 else pixels.permute(2, 0, 1)
        if pixels.shape[0] != self.spec.channels:  # gray view, RGB network
            pixels = pixels.expand(self.spec.channels, -1, -1)
        return pixels.float().sub_(self.mean).mul_(self.inv_std)
