"""Two real processes under torchrun (gloo on CPU): shuffle-BN MoCo and global-negative SimCLR train and
checkpoint; the checkpoint records the process count, and a run resumes on another process count that splits
its global batch evenly (the images and CPU augmentations of a step depend only on their place in the batch)."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import runfiles

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["moco", "simclr"])
def test_torchrun_two_processes_train_and_checkpoint(tmp_path, method):
    run = tmp_path / method
    args = ["--method", method, "--data", "fashion_mnist", "--arch", "r18", "--image-size", "32", "--steps", "4",
            "--batch-size", "16", "--checkpoint-every", "2", "--run-dir", str(run), "--no-progress",
            "--set", "queue_size=48", "--set", "proj_hidden=64", "--set", "log_every=1"]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "training", "pretrain", *args]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    steps = [step for step, _ in runfiles.list_checkpoints(run)]
    assert steps == [2, 4]
    state = runfiles.load_checkpoint(runfiles.checkpoint_path(run, 4))
    assert state["world_size"] == 2 and state["step"] == 4
    losses = [row["loss"] for row in runfiles.read_metrics(run) if "loss" in row]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    if method == "moco":  # one global queue: 4 steps x 16 keys (both ranks' keys) were enqueued
        assert int(state["method"]["queue_ptr"]) == 4 * 16 % 48
    digests = state["replica_digests"].tolist()  # every rank's weights (and queue) agreed at the checkpoint
    assert len(digests) == 2 and len(set(digests)) == 1
    # the same global batch on one process: the run resumes (and says so in its log)
    single = subprocess.run([sys.executable, "-m", "training", "pretrain", *args[:-6], "--steps", "6",
                             "--set", "queue_size=48", "--set", "proj_hidden=64", "--set", "log_every=1"],
                            cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-2000:]
    events = [row for row in runfiles.read_metrics(run) if row.get("event") == "resumed"]
    assert events == [{"step": 4, "event": "resumed", "world_size": 1, "world_size_before": 2}]
    assert runfiles.load_checkpoint(runfiles.checkpoint_path(run, 6))["world_size"] == 1
