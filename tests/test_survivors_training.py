"""Defects that once passed the whole suite (issue 17), each pinned against an independent reference.

Every test here fails on a specific realistic mutant of training/ (named in its docstring) and was
checked by applying that mutant by hand.
"""
from __future__ import annotations

import collections
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from training.evaluate import knn_predict, labelled_subset, linear_probe, mean_auroc
from training.moco import MoCo


def _backbone():
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU())


def _moco(**kwargs):
    torch.manual_seed(0)
    options = dict(dim=4, hidden=8, queue_size=32, ema_momentum=0.9)
    return MoCo(_backbone(), 16, **{**options, **kwargs})


def _images(n=8, seed=1):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- MoCo key encoder
def test_forward_moves_key_encoder_by_hand_computed_ema():
    """Mutant: MoCo.forward never calls momentum_step (the key encoder stays at its init forever)."""
    moco = _moco(ema_momentum=0.9)
    with torch.no_grad():  # make query != key, as after any optimizer step
        for p in moco.query.parameters():
            p.add_(torch.randn_like(p))
    old_key = [p.clone() for p in moco.key.parameters()]
    query = [p.clone() for p in moco.query.parameters()]
    moco(_images(), _images(seed=2))
    for before, q, after in zip(old_key, query, moco.key.parameters()):
        assert not torch.equal(before, q)
        torch.testing.assert_close(after, 0.9 * before + 0.1 * q)  # momentum 0.9, not the symmetric 0.5


@pytest.mark.parametrize("bn_splits", [1, 4])
def test_eval_mode_keys_are_the_normalised_key_encoder_output(bn_splits):
    """Mutant: split-BN un-shuffles with the forward permutation (restored = keys[order]), so image i gets
    another image's key. In eval mode BN uses running statistics, so the shuffle must be invisible."""
    moco = _moco(bn_splits=bn_splits).eval()
    with torch.no_grad():
        for module in moco.key.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_(), module.running_var.uniform_(0.5, 2.0)
    x = _images(16)
    with torch.no_grad():
        expected = F.normalize(moco.key(x), dim=1)
    for seed in range(3):
        torch.manual_seed(seed)
        torch.testing.assert_close(moco.encode_key(x), expected)


@pytest.mark.parametrize("bn_splits", [1, 4])
def test_train_mode_split_bn_uses_each_groups_own_statistics(bn_splits):
    """In train mode each key is computed with the batch statistics of its own group of the shuffled
    batch: the reference replays the same permutation through torch's BatchNorm."""
    moco = _moco(bn_splits=bn_splits).train()
    x = _images(16)
    torch.manual_seed(5)
    got = moco.encode_key(x)
    torch.manual_seed(5)
    order = torch.randperm(16)
    reference = copy.deepcopy(moco.key).train()
    expected = torch.empty(16, 4)
    with torch.no_grad():
        for group in order.chunk(bn_splits):
            expected[group] = F.normalize(reference(x[group]), dim=1)
    torch.testing.assert_close(got, expected)
    if bn_splits > 1:  # and that is not what one batch-wide BN gives
        assert not torch.allclose(got, F.normalize(reference(x), dim=1), atol=1e-3)


def _reference_info_nce(q, k, queue, t):
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.t()], dim=1).double() / t
    return float((-F.log_softmax(logits, dim=1)[:, 0]).mean())


def test_symmetric_loss_pairs_each_query_with_the_other_views_key():
    """Mutant: the symmetric loss pairs q2 with its own key k2 (a trivial positive)."""
    moco = _moco(symmetric=True, bn_splits=1, ema_momentum=0.9).train()
    with torch.no_grad():
        for p in moco.key.parameters():
            p.add_(0.3 * torch.randn_like(p))
    v1, v2 = _images(seed=3), _images(seed=4)
    queue = moco.queue.clone()
    loss = moco(v1, v2)
    with torch.no_grad():  # one BN group: batch statistics do not depend on the shuffle
        k1, k2 = F.normalize(moco.key(v1), dim=1), F.normalize(moco.key(v2), dim=1)
        q1, q2 = F.normalize(moco.query(v1), dim=1), F.normalize(moco.query(v2), dim=1)
    expected = 0.5 * (_reference_info_nce(q1, k2, queue, 0.2) + _reference_info_nce(q2, k1, queue, 0.2))
    wrong = 0.5 * (_reference_info_nce(q1, k2, queue, 0.2) + _reference_info_nce(q2, k2, queue, 0.2))
    assert abs(expected - wrong) > 1e-3
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    moco.after_backward()  # both views' keys are enqueued, view 1's first
    assert int(moco.queue_ptr) == 16
    torch.testing.assert_close(moco.queue[:16], torch.cat([k1, k2]), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- the queue
def test_queue_is_a_fifo_of_the_newest_keys_even_past_its_size():
    """Mutant: enqueueing more keys than the queue holds keeps the oldest (keys[:size]).

    Reference: a FIFO (deque of maxlen K) fed key by key; the queue read from its pointer onwards must
    equal it, oldest first, after every enqueue."""
    moco = _moco(queue_size=10)
    fifo = collections.deque(moco.queue.clone(), maxlen=10)
    generator = torch.Generator().manual_seed(0)
    for count in (7, 5, 13, 10, 3, 24, 1):
        keys = F.normalize(torch.randn(count, 4, generator=generator), dim=1)
        moco.enqueue(keys)
        fifo.extend(keys)
        ptr = int(moco.queue_ptr)
        assert torch.equal(torch.roll(moco.queue, -ptr, dims=0), torch.stack(list(fifo))), count


# ---------------------------------------------------------------- evaluation protocols
def _unit_at(degrees):
    radians = math.radians(degrees)
    return [math.cos(radians), math.sin(radians)]


def test_knn_temperature_changes_the_vote():
    """Mutant: kNN votes ignore the temperature (exp(sim) instead of exp(sim / t)).

    One class-0 neighbour at cosine 0.99 against two class-1 neighbours at cosine 0.60 (k=3): with
    t=0.1 the close one wins (e^9.9 > 2 e^6.0); with t=1 the pair wins (e^0.99 < 2 e^0.6)."""
    train = torch.tensor([_unit_at(math.degrees(math.acos(0.99))), _unit_at(-math.degrees(math.acos(0.6))),
                          _unit_at(math.degrees(math.acos(0.6))), _unit_at(180.0)])
    labels = torch.tensor([0, 1, 1, 0])
    test = torch.tensor([[3.0, 0.0]])  # not unit length: kNN must normalise
    assert knn_predict(train, labels, test, 2, k=3, t=0.1).tolist() == [0]
    assert knn_predict(train, labels, test, 2, k=3, t=1.0).tolist() == [1]
    assert knn_predict(train, labels, test, 2, k=4, t=1.0).tolist() == [1]  # the far class-0 point counts little


def test_mean_auroc_skips_labels_with_one_class():
    """Mutant: a label whose column holds one class counts as AUROC 0.5 instead of being skipped."""
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.7, 0.3, 0.9], [0.1, 0.6, 0.2]])
    targets = torch.tensor([[1, 1, 0], [0, 1, 0], [1, 1, 0], [1, 1, 0]]).float()
    # column 0: positives {0.9, 0.7, 0.1}, negative {0.2}: 2 of 3 pairs ordered -> 2/3; columns 1, 2 skipped
    assert mean_auroc(scores, targets) == pytest.approx(2 / 3)
    assert math.isnan(mean_auroc(scores[:, 1:], targets[:, 1:]))
    # the HPT study's rule, on request: one-class labels score 0 and stay in the mean
    assert mean_auroc(scores, targets, one_class="study") == pytest.approx((2 / 3 + 0 + 0) / 3)


def test_linear_probe_chooses_lr_on_validation_not_test():
    """Mutant: the lr is chosen by the test score. Here test = validation with the labels flipped, so
    test accuracy is 1 - validation accuracy and the two splits prefer different lrs."""
    generator = torch.Generator().manual_seed(0)

    def sample(n):  # feature 2 is feature 1's noise: a small lr stays near the noisy class-mean direction
        y = torch.randint(0, 2, (n,), generator=generator)
        noise = 3 * torch.randn(n, generator=generator)
        x = torch.stack([(2 * y - 1).float() + noise, noise + 0.3 * torch.randn(n, generator=generator)], 1)
        return x, y
    (tx, ty), (vx, vy) = sample(400), sample(200)
    result = linear_probe(tx, ty, vx, vy, vx, 1 - vy, 2, lrs=(1e-3, 1.0), iterations=200, batch_size=64,
                          val_every=50)
    low, high = result["grid"]
    assert high["val"] > low["val"] + 0.05  # validation prefers lr 1.0 ...
    assert low["test"] > high["test"]  # ... test would prefer 1e-3
    assert result["lr"] == 1.0 and result["val"] == high["val"]
    assert result["value"] == pytest.approx(1 - result["val"])  # the test score at the best-validation point


def test_labelled_subset_never_redraws_the_per_class_picks():
    """Mutant: the random fill draws from every index (per-class picks can be drawn twice), giving fewer
    distinct images than asked. Near-complete subsets of a small set make a repeat all but certain."""
    labels = np.repeat(np.arange(6), 5)  # 30 images, 6 classes
    for seed in range(20):
        chosen = labelled_subset(labels, 28, seed=seed)
        assert len(chosen) == 28 and len(np.unique(chosen)) == 28, seed
        assert set(labels[chosen]) == set(range(6))
        assert np.array_equal(chosen, labelled_subset(labels, 28, seed=seed))
    assert np.array_equal(labelled_subset(labels, 30, seed=1), np.arange(30))
    assert not np.array_equal(labelled_subset(labels, 12, seed=1), labelled_subset(labels, 12, seed=2))


# ---------------------------------------------------------------- the engine
def test_real_run_enqueues_every_steps_keys(tmp_path):
    """Mutant: the engine never calls after_backward, so the queue stays the random init forever.

    After 5 steps of 32 keys into a queue of 100 (not a multiple of the batch) the pointer must be
    5 x 32 mod 100 = 60 and every slot must hold a key from this run, not its random initial value."""
    from training import runfiles
    from training.config import resolve
    from training.engine import prepare, pretrain

    config = resolve({}, dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=32,
                              steps=5, lr=0.1, lr_scaling="none", queue_size=100, proj_hidden=64, ema_momentum=0.9,
                              bn_splits=2, log_every=1, checkpoint_every=1000, progress=False))
    initial = prepare(dict(config)).method.state_dict()
    final = runfiles.load_checkpoint(pretrain(dict(config), tmp_path / "run"))["method"]
    assert int(final["queue_ptr"]) == 5 * 32 % 100
    changed = (final["queue"] != initial["queue"]).any(dim=1)
    assert bool(changed.all()), int(changed.sum())
    torch.testing.assert_close(final["queue"].norm(dim=1), torch.ones(100))
    # the key encoder followed the query encoder by EMA: it moved, but it is not the query encoder
    key_conv, query_conv = final["key.backbone.conv1.weight"], final["query.backbone.conv1.weight"]
    assert not torch.equal(key_conv, initial["key.backbone.conv1.weight"])
    assert not torch.allclose(key_conv, query_conv)
