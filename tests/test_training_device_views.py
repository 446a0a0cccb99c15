"""Batched on-device augmentations: deterministic per seed, each op does its job, and the views match the
per-image torchvision pipeline in distribution (run here on the CPU; the code is device-agnostic)."""
import pytest
import torch

from training.device_views import BatchedViews, raw_transform
from training.views import InputSpec, view_transform

SPEC = InputSpec(3, 32, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _images(count=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 3, 1, 1, generator=generator) * 255  # a colour per image ...
    ramp = torch.linspace(0, 60, 32).view(1, 1, 1, 32)  # ... with a left-to-right ramp: flips are visible
    return (base * 0.7 + ramp).clamp(0, 255).to(torch.uint8).expand(count, 3, 32, 32).contiguous()


def test_same_seed_same_views_other_seed_other_views():
    views = BatchedViews(SPEC, "moco")
    images = _images()
    first = views(images, torch.Generator().manual_seed(1))
    assert first.shape == (64, 3, 32, 32) and first.dtype == torch.float32 and torch.isfinite(first).all()
    assert torch.equal(first, views(images, torch.Generator().manual_seed(1)))
    assert not torch.equal(first, views(images, torch.Generator().manual_seed(2)))


def test_each_operation_does_its_job():
    images = _images().float() / 255
    views = BatchedViews(SPEC, dict(crop_scale=(1.0, 1.0), jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=1.0,
                                    blur_p=1.0, flip_p=1.0))
    generator = torch.Generator().manual_seed(0)
    gray = views.grayscale(images, generator)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    flat = torch.full((4, 3, 32, 32), 0.5)
    assert torch.allclose(views.blur(flat, generator), flat, atol=1e-6)  # blur keeps a constant image
    assert views.blur(images, generator).diff(dim=3).abs().mean() < images.diff(dim=3).abs().mean()
    flipped = views.crop_and_flip(images, generator)  # flip_p=1: the ramp now falls left to right
    assert (flipped[..., -1] < flipped[..., 0]).float().mean() > 0.9
    assert torch.equal(views.jitter(images, generator), images)  # jitter_p=0


@pytest.mark.parametrize("recipe", ["moco", "simclr"])
def test_views_match_the_per_image_pipeline_in_distribution(recipe):
    images = _images(1024, seed=3)  # many views: the per-image pipeline's own seed-to-seed spread is ~0.05 here
    batched = BatchedViews(SPEC, recipe)(images, torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    per_image = torch.stack([view_transform(SPEC, recipe)(image) for image in images])
    for statistic in (lambda x: x.mean(dim=(0, 2, 3)), lambda x: x.std(dim=(0, 2, 3))):
        assert torch.allclose(statistic(batched), statistic(per_image), atol=0.15), recipe
    assert raw_transform(SPEC)(images[0]).dtype == torch.uint8
