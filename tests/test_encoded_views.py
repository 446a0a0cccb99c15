"""The prepared-data views do torchvision's colour jitter pixel for pixel, in fewer passes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torchvision.transforms import functional as TF

from training.encoded_views import EncodedViews, blend_table
from training.views import InputSpec

MOCO = {"crop_scale": (0.2, 1.0), "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8, "gray_p": 0.2, "blur_p": 0.5,
        "flip_p": 0.5}


def _photo(mode: str, seed: int = 0, size: int = 48) -> Image.Image:
    from skimage import data

    rng = np.random.default_rng(seed)
    top, left = rng.integers(0, 200, size=2)
    crop = data.astronaut()[top:top + size, left:left + size]
    image = Image.fromarray(np.ascontiguousarray(crop))
    return image.convert(mode)


@pytest.mark.parametrize("factor", [0.0, 0.6, 0.999, 1.0, 1.37, 2.5])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_blend_tables_equal_imageenhance_brightness_and_contrast(factor, mode):
    from PIL import ImageStat

    image = _photo(mode)
    bands = len(image.getbands())
    brightness = image.point(blend_table(0, factor) * bands)
    assert np.array_equal(np.array(brightness), np.array(ImageEnhance.Brightness(image).enhance(factor)))
    mean = int(ImageStat.Stat(image.convert("L")).mean[0] + 0.5)
    contrast = image.point(blend_table(mean, factor) * bands)
    assert np.array_equal(np.array(contrast), np.array(ImageEnhance.Contrast(image).enhance(factor)))


@pytest.mark.parametrize("seed", range(12))
def test_jitter_equals_torchvision_color_jitter_ops_in_the_drawn_order(seed):
    views = EncodedViews(InputSpec(3, 48, (0.5,) * 3, (0.25,) * 3), MOCO)
    image = _photo("RGB", seed)
    torch.manual_seed(seed)
    ours = views._jitter(image)
    torch.manual_seed(seed)  # the same draws, through torchvision's own PIL kernels
    brightness, contrast, saturation, hue = MOCO["jitter"]
    draws = torch.rand(4).tolist()
    expected = image
    for op in torch.randperm(4).tolist():
        if op == 0:
            expected = TF.adjust_brightness(expected, 1 - brightness + 2 * brightness * draws[0])
        elif op == 1:
            expected = TF.adjust_contrast(expected, 1 - contrast + 2 * contrast * draws[1])
        elif op == 2:
            expected = TF.adjust_saturation(expected, 1 - saturation + 2 * saturation * draws[2])
        else:
            expected = TF.adjust_hue(expected, -hue + 2 * hue * draws[3])
    assert ours.mode == "RGB" and np.array_equal(np.array(ours), np.array(expected))
    assert not np.array_equal(np.array(ours), np.array(image))


@pytest.mark.parametrize("seed", range(8))
def test_gray_source_kept_one_band_gives_the_views_of_its_rgb_copy(seed):
    """A gray X-ray for an RGB network: processing one band and replicating at the end is the same as
    replicating first (every op acts on R=G=B alike), with the same random draws."""
    views = EncodedViews(InputSpec(3, 32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)), MOCO)
    gray = _photo("L", seed, size=64)
    box = (3.0, 5.0, 60.0, 61.0)
    torch.manual_seed(seed)
    one_band = views._view(gray, box)
    torch.manual_seed(seed)
    replicated = views._view(gray.convert("RGB"), box)
    assert one_band.shape == (3, 32, 32) and torch.equal(one_band, replicated)
    assert not torch.equal(one_band[0], one_band[1])  # per-channel normalisation still applies
