"""Self-training and SimCLR v2 distillation: pseudo-label selection, the mixed labelled/pseudo batches,
the distillation loss against float64, and a 2-process torchrun self-training chain."""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import runfiles
from training.data import open_source
from training.distill import distillation_loss
from training.selftrain import MixedBatches, select_pseudo_labels

ROOT = Path(__file__).resolve().parents[1]


def test_distillation_loss_matches_float64_reference():
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    teacher = torch.randn(7, 5, generator=generator, dtype=torch.float64) * 3
    for tau in (0.5, 1.0, 2.0):
        total = 0.0
        for s_row, t_row in zip(student.tolist(), teacher.tolist()):
            t_z = sum(math.exp(x / tau) for x in t_row)
            s_z = math.log(sum(math.exp(x / tau) for x in s_row))
            total += -sum(math.exp(t / tau) / t_z * (s / tau - s_z) for s, t in zip(s_row, t_row))
        assert float(distillation_loss(student, teacher, tau)) == pytest.approx(total / 7, rel=1e-10)
    # the student matching the teacher minimises it: the loss is then the teacher's entropy
    assert float(distillation_loss(teacher, teacher, 1.0)) < float(distillation_loss(student, teacher, 1.0))


def test_pseudo_labels_threshold_top_up_and_class_balance():
    logits = torch.tensor([[9.0, 0, 0], [8, 0, 0], [7, 0, 0], [0, 6, 0], [0, 0, 0.1], [0, 0, 0.2], [0, 0, 5]])
    plain = select_pseudo_labels(logits, threshold=0.9)
    assert plain["rows"].tolist() == [0, 1, 2, 3, 6]  # confident ones, most confident first
    assert plain["hard"].tolist() == [0, 0, 0, 1, 2] and not plain["stats"]["topped_up"]
    assert torch.allclose(plain["soft"].sum(dim=1), torch.ones(5))
    balanced = select_pseudo_labels(logits, threshold=0.9, balance=True)
    # 5 kept over 3 classes: 1 each, each class's most confident
    assert sorted(balanced["rows"].tolist()) == [0, 3, 6] and balanced["stats"]["per_class"] == [1, 1, 1]
    rare = select_pseudo_labels(logits[[0, 1, 2, 3]], threshold=0.0, balance=True)
    assert rare["hard"].tolist().count(1) == 2 and rare["rows"].tolist().count(3) == 2  # the rare class repeated
    unsure = select_pseudo_labels(logits[[4, 5]], threshold=0.9, at_least=1)
    assert unsure["rows"].tolist() == [1] and unsure["stats"]["topped_up"]  # the most confident kept
    soft = select_pseudo_labels(logits, temperature=100.0, threshold=0.0)
    assert soft["soft"].max() < 0.4  # a high temperature flattens the soft targets


def test_mixed_batches_hold_labelled_and_pseudo_parts_split_over_ranks():
    images = open_source("fashion_mnist", "val")
    labelled, pseudo = torch.arange(0, 40), torch.arange(1000, 1100)
    whole = MixedBatches(images, None, 12, 0, 0, 1, labelled, pseudo, labelled_share=4)
    for step in (0, 9, 10, 11):  # the labelled part's epoch is 10 steps: it wraps while the pseudo part goes on
        batch = whole.positions(step)
        assert (batch[:4] < 40).all() and (batch[4:] >= 1000).all() and len(batch) == 12
    epoch = torch.cat([whole.positions(step)[:4] for step in range(10)])
    assert sorted(epoch.tolist()) == list(range(40))
    ranks = [MixedBatches(images, None, 12, 0, rank, 2, labelled, pseudo, labelled_share=4) for rank in range(2)]
    batch = whole.positions(3)
    parts = [r.positions(3) for r in ranks]
    assert torch.equal(torch.cat([parts[0][:2], parts[1][:2]]), batch[:4])
    assert torch.equal(torch.cat([parts[0][2:], parts[1][2:]]), batch[4:])
    with pytest.raises(ValueError, match="multiple"):
        MixedBatches(images, None, 12, 0, 0, 2, labelled, pseudo, labelled_share=3)


def test_torchrun_two_processes_selftrain(tmp_path):
    run = tmp_path / "selftrain"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "training", "pretrain", "--method", "selftrain", "--data", "fashion_mnist", "--arch", "r18",
               "--image-size", "32", "--steps", "2", "--batch-size", "16", "--run-dir", str(run), "--no-progress",
               "--set", "labels=100", "--set", "unlabeled_images=64", "--set", "pseudo=soft",
               "--set", "log_every=1"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    final = runfiles.load_checkpoint(runfiles.latest_checkpoint(run)[1])
    assert final["world_size"] == 2 and final["config"]["method"] == "selftrain"
    assert [hop["role"] for hop in final["lineage"]] == ["teacher", "init"]
    for phase in ("teacher", "student_1"):
        state = runfiles.load_checkpoint(runfiles.latest_checkpoint(run / phase)[1])
        assert state["world_size"] == 2 and state["step"] == 2
    pseudo = torch.load(run / "pseudo_1.pt", weights_only=True)
    assert pseudo["targets"].shape[1] == 10 and len(pseudo["indices"]) >= 8  # soft targets, a batch's worth
    # rerunning the finished chain resumes nothing and returns the same checkpoint
    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and runfiles.latest_checkpoint(run)[0] == 2, again.stderr[-2000:]
    # one trainer per chain: while another process holds it (between phases too), a second is refused at once
    with runfiles.sole_trainer(run):
        refused = subprocess.run([sys.executable] + command[6:], cwd=ROOT, capture_output=True, text=True,
                                 timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert refused.returncode != 0 and "being trained by another process" in refused.stderr, refused.stderr[-2000:]
