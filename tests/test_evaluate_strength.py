"""training.evaluate's pure parts against references written out by hand: kNN scores (weights, k,
chunks, multi-label), AUROC details, the score rule, the linear probe's schedule and validation
points, the labelled subset, and the record."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training import evaluate as ev


def _reference_knn(train, labels, test, num_classes, k, t):
    train = train / train.norm(dim=1, keepdim=True)
    test = test / test.norm(dim=1, keepdim=True)
    out = []
    for row in test:
        sims = [(float(row @ x), i) for i, x in enumerate(train)]
        top = sorted(sims, reverse=True)[:k]
        votes = [0.0] * num_classes
        for sim, i in top:
            votes[int(labels[i])] += math.exp(sim / t)
        total = sum(math.exp(sim / t) for sim, _ in top)
        out.append([v / total for v in votes])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("k,t,chunk", [(5, 0.1, 1024), (3, 0.5, 2), (100, 0.07, 3)])
def test_knn_scores_match_the_reference(k, t, chunk):
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(20, 6, generator=generator)
    labels = torch.randint(0, 4, (20,), generator=generator)
    test = torch.randn(7, 6, generator=generator)
    got = ev.knn_scores(train, labels, test, 4, k=k, t=t, chunk=chunk)
    torch.testing.assert_close(got.double(), _reference_knn(train, labels, test, 4, min(k, 20), t), rtol=1e-4,
                               atol=1e-9)
    assert torch.equal(ev.knn_predict(train, labels, test, 4, k=k, t=t, chunk=chunk), got.argmax(1))


def test_knn_defaults_are_k200_t01():
    generator = torch.Generator().manual_seed(1)
    train = torch.randn(250, 5, generator=generator)
    labels = torch.randint(0, 3, (250,), generator=generator)
    test = torch.randn(4, 5, generator=generator)
    torch.testing.assert_close(ev.knn_scores(train, labels, test, 3).double(),
                               _reference_knn(train, labels, test, 3, 200, 0.1), rtol=1e-4, atol=1e-6)


def test_multi_label_knn_scores_are_weighted_label_fractions():
    train = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    carried = torch.tensor([[1, 0, 1], [1, 1, 0], [0, 1, 0]]).float()
    test = torch.tensor([[0.6, 0.8]])
    sims = torch.tensor([0.6, 0.96, 0.8])
    weights = (sims / 0.5).exp()
    expected = (weights[:, None] * carried).sum(0) / weights.sum()
    torch.testing.assert_close(ev.knn_scores(train, carried, test, 3, k=3, t=0.5)[0], expected)


def test_mean_auroc_rejects_an_unknown_rule_and_auroc_summary_reports_both_means():
    with pytest.raises(ValueError, match="^one_class must be 'skip' or 'study', not 'drop'$"):
        ev.mean_auroc(torch.zeros(2, 1), torch.zeros(2, 1), one_class="drop")
    scores = torch.tensor([[0.9, 0.5], [0.1, 0.4], [0.8, 0.3]])
    targets = torch.tensor([[1, 0], [0, 0], [1, 0]])  # column 1 has no positive
    summary = ev.auroc_summary(scores, targets)
    assert summary["value"] == pytest.approx(0.5) and summary["mean_auroc_defined_labels"] == pytest.approx(1.0)
    assert summary["one_class_labels"] == 1 and "HPT study" in summary["one_class_rule"]
    perfect_ties = torch.tensor([[0.5], [0.5], [0.5], [0.5]])
    assert ev.mean_auroc(perfect_ties, torch.tensor([[1.0], [0.0], [1.0], [0.0]])) == pytest.approx(0.5)
    reversed_scores = torch.tensor([[0.1], [0.9], [0.2]])
    assert ev.mean_auroc(reversed_scores, torch.tensor([[1.0], [0.0], [1.0]])) == 0.0


def test_score_rules():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert ev.score(logits, torch.tensor([0, 1, 1]), False) == pytest.approx(2 / 3)
    assert ev.score(torch.tensor([[float("nan"), 1.0]]), torch.tensor([1]), False) == 0.0
    multi = ev.score(torch.tensor([[3.0], [-1.0], [0.5]]), torch.tensor([[1.0], [0.0], [0.0]]), True)
    assert multi == pytest.approx(1.0)
    assert ev.top1(logits, torch.tensor([1, 1, 0])) == pytest.approx(2 / 3)


def test_linear_probe_schedule_and_validation_points():
    """lr x0.1 at 1651/5000 and 3333/5000 of the iterations, validation every val_every and at the end."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    seen_lrs, validated = [], []
    original_score = ev.score

    class Spy(torch.optim.SGD):
        def step(self, closure=None):
            seen_lrs.append(self.param_groups[0]["lr"])
            return super().step(closure)

    def spy_score(logits, labels, multi):
        validated.append(len(seen_lrs))
        return original_score(logits, labels, multi)
    try:
        torch.optim.SGD, ev.score = Spy, spy_score
        result = ev.linear_probe(x, y, x, y, x, y, 2, lrs=(0.5,), iterations=50, batch_size=16, val_every=20)
    finally:
        torch.optim.SGD, ev.score = Spy.__mro__[1], original_score
    assert seen_lrs[:16] == [0.5] * 16 and seen_lrs[17:33] == pytest.approx([0.05] * 16)
    assert seen_lrs[33:] == pytest.approx([0.005] * 17) and len(seen_lrs) == 50
    assert sorted(set(validated)) == [20, 40, 50]
    assert result["iteration"] in (20, 40, 50) and result["grid"][0]["lr"] == 0.5


def test_linear_probe_first_best_validation_point_wins_and_multi_label_reports_auroc():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(80, 3, generator=generator)
    y = (x[:, :2] > 0).float()
    result = ev.linear_probe(x, y, x, y, x, y, 2, multi_label=True, lrs=(1.0,), iterations=40, batch_size=80,
                             val_every=10)
    assert result["val"] > 0.9 and result["value"] == result["val"]  # test = validation here
    assert result["test_auroc"]["value"] == pytest.approx(result["value"])
    assert result["test_auroc"]["one_class_labels"] == 0
    separable = ev.linear_probe(x, (x[:, 0] > 0).long(), x, (x[:, 0] > 0).long(), x, (x[:, 0] > 0).long(), 2,
                                lrs=(5.0,), iterations=30, batch_size=80, val_every=10)
    assert separable["val"] == 1.0 and separable["iteration"] == 10  # ties later do not move the choice


def test_labelled_subset_multi_label_covers_the_rarest_labels_first():
    labels = np.zeros((40, 4))
    labels[:, 0] = 1
    labels[5, 1] = labels[6, 1] = 1
    labels[9, 2] = 1
    chosen = ev.labelled_subset(labels, 6, seed=0)
    assert len(chosen) == len(np.unique(chosen)) == 6 and 9 in chosen and ({5, 6} & set(chosen.tolist()))
    assert ev.labelled_subset(labels, 1, seed=0).tolist() == [9]  # one image: the rarest label's carrier
    assert np.array_equal(ev.labelled_subset(labels, 40), np.arange(40))
    with pytest.raises(ValueError, match="^2 labels cannot cover 3 classes$"):
        ev.labelled_subset(np.array([0, 1, 2, 2]), 2)


def test_record_fields_and_command(monkeypatch):
    monkeypatch.setattr("sys.argv", ["/x/training/__main__.py", "evaluate", "a b"])
    monkeypatch.setattr("sys.executable", "/usr/bin/python3")
    assert ev.command_line() == "python3 -m training evaluate 'a b'"
    monkeypatch.setattr("sys.argv", ["bench.py", "--n", "2"])
    assert ev.command_line() == "bench.py --n 2"
    row = ev.record("linear", "digits", "test", "top1", np.float32(0.5), lr=0.3)
    assert row == {"protocol": "linear", "data": "digits", "split": "test", "metric": "top1", "value": 0.5,
                   "command": "bench.py --n 2", "lr": 0.3} and type(row["value"]) is float
    assert ev.record("knn", "d", "val", "top1", 1, command="given")["command"] == "given"
