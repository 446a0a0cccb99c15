"""Evaluation protocols on inputs whose answer is known, plus the data/view plumbing they rely on."""
import itertools

import numpy as np
import pytest
import torch

from training.data import open_source
from training.evaluate import knn_predict, labelled_subset, linear_probe, mean_auroc
from training.views import input_spec, view_transform
from zoo.domains import get_domain


def test_knn_votes_by_weighted_neighbours():
    train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([0, 0, 1, 1])
    test = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    assert knn_predict(train, labels, test, 2, k=3, t=0.1).tolist() == [0, 1]


def test_mean_auroc_matches_pairwise_count_with_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (60, 3), generator=generator).float()  # many ties
    targets = (torch.rand(60, 3, generator=generator) > 0.5).float()
    expected = []
    for c in range(3):
        pos = scores[targets[:, c] == 1, c]
        neg = scores[targets[:, c] == 0, c]
        wins = sum(float(p > n) + 0.5 * float(p == n) for p, n in itertools.product(pos, neg))
        expected.append(wins / (len(pos) * len(neg)))
    assert mean_auroc(scores, targets) == pytest.approx(np.mean(expected))


def test_linear_probe_selects_on_validation_and_reports_test():
    generator = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=generator) * 3

    def sample(n):
        y = torch.randint(0, 4, (n,), generator=generator)
        return centers[y] + torch.randn(n, 16, generator=generator), y
    (tx, ty), (vx, vy), (sx, sy) = sample(400), sample(200), sample(200)
    result = linear_probe(tx, ty, vx, vy, sx, sy, 4, lrs=(0.0, 0.3), iterations=300, batch_size=64, val_every=50)
    assert result["lr"] == 0.3 and result["value"] > 0.9
    assert [r["lr"] for r in result["grid"]] == [0.0, 0.3] and result["grid"][0]["val"] < 0.5


def test_labelled_subset_covers_every_class():
    labels = np.array([0] * 500 + [1] * 3 + [2] * 1)
    chosen = labelled_subset(labels, 20, seed=3)
    assert len(chosen) == len(set(chosen)) == 20 and set(labels[chosen]) == {0, 1, 2}
    with pytest.raises(ValueError):
        labelled_subset(labels, 2)


def test_gray_source_replicated_to_rgb_with_base_statistics():
    images = open_source("fashion_mnist", "val")
    base_cfg = {"input_size": (3, 224, 224), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    spec = input_spec(images.domain, base_cfg=base_cfg, image_size=48)
    assert spec.channels == 3 and spec.mean == (0.485, 0.456, 0.406)
    torch.manual_seed(0)
    view = view_transform(spec, "moco")(images.image(0))
    assert view.shape == (3, 48, 48) and view.dtype == torch.float32
    native = input_spec(get_domain("fashion_mnist"))
    assert native.channels == 1 and native.image_size == 64 and native.mean == (0.2860,)
    with pytest.raises(ValueError, match="expects 3 channels"):
        input_spec(images.domain, channels=1, base_cfg=base_cfg)


def test_image_folder_source_and_missing_split(tmp_path):
    from PIL import Image

    for split, count in (("train", 3), ("test", 2)):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(np.full((10, 12, 3), i * 40, dtype=np.uint8)).save(folder / f"{i}.png")
    train = open_source(str(tmp_path), "train", domain="flowers")
    assert len(train) == 6 and train.num_classes == 2 and train.image(0).shape == (3, 10, 12)
    assert sorted(train.labels().tolist()) == [0, 0, 0, 1, 1, 1]
    from training.offline_sets import DataNotFoundError
    with pytest.raises(DataNotFoundError, match="no 'val' split"):
        open_source(str(tmp_path), "val")


def test_evaluate_cli_semi_supervised_and_linear_records(tmp_path):
    """The CLI end to end on a random-init baseline, scaled down: records carry protocol, data, split,
    metric, value and command."""
    import json

    from training.cli import main

    out = tmp_path / "semi.json"
    assert main(["evaluate", "random:r18", "--protocol", "semi", "--data", "digits", "--labels", "20",
                 "--iterations", "3", "--batch-size", "8", "--eval-images", "60", "--out", str(out)]) == 0
    semi = json.loads(out.read_text())
    assert semi["protocol"] == "semi_supervised" and semi["labels"] == 20 and semi["metric"] == "top1"
    assert [g["lr"] for g in semi["grid"]] == [0.01, 0.001]
    best = max(semi["grid"], key=lambda g: g["val"])  # the test score of the lr validation chose
    assert (semi["lr"], semi["value"], semi["val_score"]) == (best["lr"], best["test"], best["val"])
    assert "--protocol semi" in semi["command"]
    out = tmp_path / "linear.json"
    assert main(["evaluate", "random:r18", "--protocol", "linear", "--data", "digits", "--iterations", "200", "--train-images", "300", "--eval-images", "100",
                 "--out", str(out)]) == 0
    linear = json.loads(out.read_text())
    assert linear["protocol"] == "linear" and linear["split"] == "test"
    best = max(linear["grid"], key=lambda g: g["val"])
    assert (linear["lr"], linear["value"], linear["val_score"]) == (best["lr"], best["test"], best["val"])
    assert linear["lr"] in (0.3, 3.0, 30.0) and len(linear["grid"]) == 3
