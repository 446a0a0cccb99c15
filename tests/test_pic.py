"""PIC: its loss against float64, the lazy class-weight rows against dense SGD, the sliding window,
exact resume across a window boundary, and a 2-process torchrun run."""
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import runfiles
from training.config import resolve
from training.data import open_source
from training.engine import pretrain
from training.optim import cosine_lr
from training.pic import DecayProducts, LazyRows, WindowBatches, pic_loss, window_coverage, window_settings

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(method="pic", data="fashion_mnist", arch="r18", image_size=32, batch_size=16, proj_hidden=64,
            pic_negatives=64, log_every=1, checkpoint_every=1000, progress=False)


def reference_pic_loss(z, w, target, t):
    total = 0.0
    for i in range(z.shape[0]):
        zi = z[i] / z[i].norm()
        logits = [float(zi @ (w[j] / w[j].norm())) / t for j in range(w.shape[0])]
        top = max(logits)
        total += -(logits[target[i]] - top - math.log(sum(math.exp(x - top) for x in logits)))
    return total / z.shape[0]


@pytest.mark.parametrize("temperature", [0.07, 0.2, 1.0])
def test_pic_loss_matches_float64_reference(temperature):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(12, 8, generator=generator, dtype=torch.float64) * 3
    w = torch.randn(30, 8, generator=generator, dtype=torch.float64) * 0.01
    target = torch.randint(0, 30, (12,), generator=generator)
    got = pic_loss(z, w, target, temperature)
    assert float(got) == pytest.approx(reference_pic_loss(z, w, target, temperature), rel=1e-10)
    assert float(pic_loss(z.float(), w.float(), target, temperature)) == pytest.approx(float(got), rel=1e-5)


def test_decay_products_equal_the_step_by_step_product():
    products = DecayProducts(momentum=0.9, weight_decay=0.01)
    lrs = [0.5 * (1 + math.cos(math.pi * s / 3000)) for s in range(2100)]  # past the first table size (1024)
    for lr in lrs:
        products.append(lr)
    starts = torch.tensor([0, 1, 5, 1023, 1024, 1500, 2099, 2100, 777])
    end = 2100
    got = products.products(starts, end)
    for row, start in enumerate(starts.tolist()):
        expected = torch.eye(2, dtype=torch.float64)
        for step in range(start, end):
            lr = lrs[step]
            expected = torch.tensor([[1 - lr * 0.01, -lr * 0.9], [0.01, 0.9]], dtype=torch.float64) @ expected
        assert torch.allclose(got[row], expected, rtol=1e-12, atol=1e-14), start


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-11), (torch.float32, 2e-5)])
def test_lazy_rows_equal_dense_sgd_with_momentum_and_weight_decay(dtype, tolerance):
    """Many steps, few rows sampled per step (most rows sit unsampled for long gaps), cosine lr with
    warm-up: the lazy rows must equal torch.optim.SGD stepping the whole matrix every step."""
    rows, dim, steps, momentum, decay = 200, 8, 1200, 0.9, 5e-3
    torch.manual_seed(0)
    lazy = LazyRows(rows, dim, momentum, decay).to(dtype)
    dense = torch.nn.Parameter(lazy.weight.clone())
    optimizer = torch.optim.SGD([dense], lr=0.0, momentum=momentum, weight_decay=decay)
    generator = torch.Generator().manual_seed(1)
    for step in range(steps):
        lr = cosine_lr(step, steps, 0.3, warmup_steps=50)
        sampled = torch.unique(torch.randint(0, rows, (int(torch.randint(1, 12, (1,), generator=generator)),),
                                             generator=generator))
        grad = torch.randn(len(sampled), dim, generator=generator, dtype=dtype)
        lazy.record_lr(lr)
        weight, velocity = lazy.current(sampled)
        assert torch.allclose(weight, dense.detach()[sampled], rtol=tolerance, atol=tolerance)  # before the step
        lazy.step(sampled, weight, velocity, grad)
        for group in optimizer.param_groups:
            group["lr"] = lr
        dense.grad = torch.zeros_like(dense)
        dense.grad[sampled] = grad
        optimizer.step()
    lazy.flush()
    assert torch.allclose(lazy.weight, dense.detach(), rtol=tolerance, atol=tolerance)
    assert torch.allclose(lazy.velocity, optimizer.state[dense]["momentum_buffer"], rtol=tolerance, atol=tolerance)
    assert (lazy.updated_to == steps).all()


def test_sliding_window_revisits_after_the_window_not_the_epoch():
    images = open_source("fashion_mnist", "val")  # 10,000 images
    batches = WindowBatches(images, None, batch_size=50, seed=3, window=1000, stride=250)
    assert (batches.window, batches.stride, batches.steps_per_window) == (1000, 250, 20)
    order = batches._order
    for window in (0, 1, 39, 40):  # the window after 40 strides wraps around the permutation
        seen = torch.cat([batches.positions(window * 20 + b) for b in range(20)])
        expected = order[(window * 250 + torch.arange(1000)) % len(images)]
        assert sorted(seen.tolist()) == sorted(expected.tolist())  # each window: D consecutive entries
    assert len(set(order[:250].tolist()) & set(torch.cat([batches.positions(20 + b) for b in range(20)]).tolist())) == 0
    # two ranks split each global batch
    ranks = [WindowBatches(images, None, 50, 3, rank, 2, window=1000, stride=250) for rank in range(2)]
    for step in (0, 7, 33):
        assert torch.equal(torch.cat([r.positions(step) for r in ranks]), batches.positions(step))
    assert window_settings(60000, 16) == (6000, 750)


def test_window_coverage_counts_the_images_a_short_run_visits():
    """Checked against the scheduler itself: the images a run's steps draw, over the set's size; and the stride it
    suggests makes the same steps reach every image."""
    images = open_source("fashion_mnist", "val")  # 10,000 images
    for steps, window, stride in ((70, 1000, 125), (30, 1000, 0), (500, 0, 0), (20, 1000, 125), (900, 1000, 125),
                                 (2000, 1000, 125)):
        batches = WindowBatches(images, None, batch_size=50, seed=1, window=window, stride=stride)
        drawn = torch.unique(torch.cat([batches.positions(step) for step in range(steps)]))
        covered, suggested = window_coverage(len(images), 50, steps, window, stride)
        assert covered == pytest.approx(len(drawn) / len(images), abs=0.01)
        whole = steps // batches.steps_per_window
        if suggested is None:  # no stride up to the window reaches every image in this many whole windows
            assert whole < 2 or (len(images) - batches.window) / (whole - 1) > batches.window
        elif covered < 1:
            wider = WindowBatches(images, None, batch_size=50, seed=1, window=window, stride=suggested)
            assert len(torch.unique(torch.cat([wider.positions(step) for step in range(steps)]))) == len(images)
            assert window_coverage(len(images), 50, steps, window, suggested)[0] == 1.0
        else:
            assert suggested == batches.stride
    # this repository's PIC quality row: 1510 steps of 128 on Fashion-MNIST's 50,000 train images
    covered, suggested = window_coverage(50_000, 128, 1510)
    assert covered == pytest.approx(0.57, abs=0.01) and suggested == 1217


def _state_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _state_equal(a[key], b[key])


def test_resume_across_a_window_boundary_is_bit_identical(tmp_path):
    # 2 steps per window: boundaries at steps 2 and 4; checkpoints at 3 and 5
    config = resolve({}, {**TINY, "steps": 5, "pic_window": 32, "checkpoint_every": 3})
    straight = runfiles.load_checkpoint(pretrain(dict(config), tmp_path / "straight"))
    shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
    runfiles.checkpoint_path(tmp_path / "resumed", 5).unlink()  # as if stopped after step 3
    resumed = runfiles.load_checkpoint(pretrain(dict(config), tmp_path / "resumed"))
    assert resumed["step"] == straight["step"] == 5
    _state_equal(straight["method"], resumed["method"])
    _state_equal(straight["optimizer"]["state"], resumed["optimizer"]["state"])
    assert straight["method"]["schedule_position"].tolist() == [2, 0]
    batches = WindowBatches(open_source("fashion_mnist"), None, 16, config["seed"], window=32)
    seen = torch.unique(torch.cat([batches.positions(step) for step in range(5)]))
    touched = torch.nonzero(straight["method"]["classes.updated_to"] > 0).flatten()
    assert torch.equal(touched, seen)  # the rows of the batches seen (their negatives are among them): no other


def test_torchrun_two_processes_pic(tmp_path):
    run = tmp_path / "pic"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "training", "pretrain", "--method", "pic", "--data", "fashion_mnist", "--arch", "r18",
               "--image-size", "32", "--steps", "3", "--batch-size", "16", "--run-dir", str(run), "--no-progress",
               "--set", "proj_hidden=64", "--set", "pic_negatives=64", "--set", "log_every=1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    # 3 steps reach a few of the 50,000 images: said once (rank 0), with the fix for a run this short
    assert done.stderr.count("visit only 0% of the 50000 images") == 1 and "larger --set pic_window" in done.stderr
    state = runfiles.load_checkpoint(runfiles.latest_checkpoint(run)[1])
    assert state["world_size"] == 2 and state["step"] == 3
    method = state["method"]
    # one global FIFO: both ranks' 8 images per step were enqueued, 48 ids in all
    recent = method["recent"]
    assert int((recent >= 0).sum()) == 48 and int(method["recent_ptr"]) == 48
    assert int((method["classes.updated_to"] == 3).sum()) >= 16  # last step's global batch rows
    losses = [row["loss"] for row in runfiles.read_metrics(run) if "loss" in row]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
