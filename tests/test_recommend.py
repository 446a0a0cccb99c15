"""zoo.recommend: the real ImageNet MobileNetV2 (through olah), local checkpoint folders, real silhouettes."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import zoo
from zoo.build import create_model
from zoo.checkpoint import timm_config, write_checkpoint
from zoo.recommend import RecommendError, ridge_loo_accuracy

BASE = "sup-imagenet-mnv2"


def real_sample(per_class: int = 20, classes: int = 10, split: str = "train"):
    """Animal silhouettes (28 px gray, uint8) from the offline set: `per_class` random images of the first classes."""
    from training.offline_sets import load_offline

    images, labels = load_offline("animals", split)
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(classes)])
    return images[chosen], labels[chosen]


def random_checkpoint(folder, timm_arch: str = "mobilenetv2_100", channels: int = 3, model_args=None, seed: int = 0):
    """A real, randomly initialised backbone written in the zoo format: the control candidate."""
    torch.manual_seed(seed)
    model = create_model(timm_arch, 0, model_args)
    cfg = {"input_size": (channels, 32, 32), "mean": (0.5,) * channels, "std": (0.25,) * channels,
           "interpolation": "bilinear", "crop_pct": 1.0}
    meta = {"name": folder.name, "strategy": "random", "method": "none", "domain": "none", "lineage": []}
    return write_checkpoint(folder, model.state_dict(), timm_config(timm_arch, 0, int(model.num_features), cfg,
                                                                    model_args), meta)


def test_ridge_leave_one_out_equals_refitting_without_each_row():
    generator = torch.Generator().manual_seed(0)
    for dims in (12, 200):  # under- and over-parametrised (200 > 30 rows: the interpolating regime)
        features = torch.randn(30, dims, generator=generator, dtype=torch.float64)
        labels = np.arange(30) % 3
        features[:, 0] += torch.as_tensor(labels, dtype=torch.float64)  # some signal
        accuracy, lam = ridge_loo_accuracy(features, labels, grid=(0.1,))
        # written out: refit on the other 29 rows (their own centring = an intercept fitted without row i)
        z = (features - features.mean(0)) / features.std(0)  # label-free scaling, as recommend does
        y = torch.nn.functional.one_hot(torch.as_tensor(labels), 3).double()
        hits = 0
        for i in range(30):
            keep = [j for j in range(30) if j != i]
            z_mean, y_mean = z[keep].mean(0), y[keep].mean(0)
            zk = z[keep] - z_mean
            kernel = zk @ zk.t() / dims
            alpha = torch.linalg.solve(kernel + lam * torch.eye(29, dtype=torch.float64), y[keep] - y_mean)
            prediction = ((z[i] - z_mean) @ zk.t() / dims) @ alpha + y_mean
            hits += int(prediction.argmax() == labels[i])
        assert accuracy == pytest.approx(hits / 30), dims
    pure_noise = torch.randn(40, 500, generator=generator, dtype=torch.float64)
    assert ridge_loo_accuracy(pure_noise, np.arange(40) % 4)[0] < 0.5  # no label leaks into its own prediction


def test_real_base_outranks_random_weights_with_timings_and_caveat(olah, hub_cache, tmp_path):
    images, labels = real_sample()
    control = random_checkpoint(tmp_path / "random-mnv2")
    ranking = zoo.recommend((images, labels), candidates=[BASE, "base-animals-mnv2", str(control)], budget_s=120,
                            sample=80, image_size=32, crop_pct=1.0)
    scores = {row["name"]: row["score"] for row in ranking.rows}
    assert set(scores) == {BASE, "base-animals-mnv2", str(control)}, ranking.skipped
    assert scores[BASE] > scores[str(control)] + 0.1, str(ranking)
    assert ranking.images == 80 and ranking.classes == 10
    for row in ranking.rows:
        assert row["seconds"] >= row["embed_s"] > 0 and row["probe_s"] > 0 and 0 < row["stderr"] < 0.2
    text = str(ranking)
    assert "caveat" in text and BASE in text and "embed s" in text
    assert [r["score"] for r in ranking.rows] == sorted(scores.values(), reverse=True)


def test_default_candidates_follow_channels_and_domain(olah, hub_cache):
    from zoo.recommend import default_candidates

    gray = default_candidates(1)
    assert BASE in gray and "base-animals-mnv2" in gray  # gray data is replicated for RGB models
    assert "base-animals-mnv2" not in default_candidates(1, domain="fashion_mnist")
    assert default_candidates(3, arch="r50") == [n for n in default_candidates(3) if "r50" in n]


def test_offline_uncached_candidate_is_skipped_with_the_reason(hub_cache, offline, tmp_path):
    images, labels = real_sample(per_class=6, classes=2)
    control = random_checkpoint(tmp_path / "random-mnv2")
    ranking = zoo.recommend((images, labels), candidates=[BASE, str(control)], budget_s=None, image_size=32)
    assert [row["name"] for row in ranking.rows] == [str(control)]  # never a silent random fallback for BASE
    assert ranking.skipped[0]["name"] == BASE and "download" in ranking.skipped[0]["reason"]


def test_rgb_data_skips_a_gray_model_and_bad_input_is_refused(tmp_path):
    images, labels = real_sample(per_class=6, classes=2)
    rgb = np.repeat(images[:, :, :, None], 3, axis=3)
    gray_model = random_checkpoint(tmp_path / "gray-r18c", "resnet18", 1, {"zoo_stem": "cifar", "in_chans": 1})
    rgb_model = random_checkpoint(tmp_path / "rgb-mnv2")
    ranking = zoo.recommend((rgb, labels), candidates=[str(gray_model), str(rgb_model)], budget_s=None)
    assert [row["name"] for row in ranking.rows] == [str(rgb_model)]
    assert "1-channel" in ranking.skipped[0]["reason"]
    with pytest.raises(RecommendError, match="two classes"):
        zoo.recommend((images, np.zeros(len(images), dtype=int)), candidates=[str(rgb_model)])
    with pytest.raises(RecommendError, match="labels"):
        zoo.recommend((images, labels[:-1]), candidates=[str(rgb_model)])


def test_cli_ranks_a_folder_and_exits_2_on_a_bad_one(tmp_path):
    from PIL import Image

    images, labels = real_sample(per_class=12, classes=3, split="val")
    folder = tmp_path / "data"
    for index, (image, label) in enumerate(zip(images, labels)):
        (folder / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"class{label}" / f"{index}.png")
    control = random_checkpoint(tmp_path / "random-mnv2")
    other = random_checkpoint(tmp_path / "random-mnv2-b", seed=1)
    command = [sys.executable, "-m", "zoo", "recommend", str(folder), "--candidates", f"{control},{other}",
               "--image-size", "32", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    ranking = json.loads(result.stdout)
    assert ranking["images"] == 36 and ranking["classes"] == 3 and len(ranking["rows"]) == 2
    assert "caveat" in ranking["caveat"]
    result = subprocess.run([sys.executable, "-m", "zoo", "recommend", str(tmp_path / "missing")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "class subfolders" in result.stderr


def test_a_tight_budget_shrinks_the_sample_but_keeps_ten_per_class(tmp_path):
    images, labels = real_sample(per_class=30, classes=3)
    control = random_checkpoint(tmp_path / "random-mnv2")
    ranking = zoo.recommend((images, labels), candidates=[str(control)], budget_s=0.01, sample=90, image_size=32)
    assert ranking.images == 30 and ranking.rows[0]["images"] == 30
    assert "sample cut to 30 images" in str(ranking)
