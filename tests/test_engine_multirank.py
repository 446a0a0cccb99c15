"""What the engine's ranks agree on, on two real gloo processes spawned by this test (a torchrun launch of
the CLI costs about a minute; this costs seconds): any rank's stop flag stops every rank, a checkpoint some
rank cannot see is refused with each rank's view, replicas whose weights differ are refused (their BN
statistics may differ), a resume on a process count that does not split the global batch is refused, and a
real two-rank run (on-device augmentation, each rank its half of the batch) checkpoints the digest both
replicas agreed on, which then resumes on one process (and not on two that see different checkpoints)."""
from __future__ import annotations

import datetime
import json
from pathlib import Path

import torch

from training import runfiles
from training.config import ConfigError, resolve
from training.engine import pretrain, replica_digest

RUN = dict(method="moco", data="fashion_mnist", arch="r18", image_size=32, batch_size=8, steps=2, lr=0.1,
           warmup_steps=0, queue_size=32, proj_hidden=32, proj_dim=16, log_every=1, checkpoint_every=1000,
           progress=False, seed=4, augment_device=True)


def _net(rank: int) -> torch.nn.Module:
    torch.manual_seed(0)  # the same weights on every rank
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        net[1].running_mean.fill_(float(rank))  # per-rank BN statistics, as under DDP
    return net


def _rank(rank: int, init_file: str, out: str, odd_run: str, odd_config: dict, config: dict) -> None:
    import torch.distributed as dist

    from training.engine import (ReplicaDivergenceError, _agree_on_resume_step, _all_ranks_flags,
                                 _checked_replica_digests, open_run_dir)

    # a bounded timeout: a rank that fails alone makes its peer's collective fail instead of waiting 30 min
    # (120 s: a spawned rank re-imports torch, slow on a loaded 2-core machine)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=120))
    seen: dict = {}
    try:
        seen["flags"] = list(_all_ranks_flags(rank == 0, rank == 1))  # non-finite on rank 0, SIGTERM on rank 1
        _agree_on_resume_step({"step": 4}, Path(out))  # the same checkpoint everywhere: nothing to say
        try:
            _agree_on_resume_step({"step": 4} if rank == 0 else None, Path(out) / "node-local")
        except ConfigError as error:
            seen["resume"] = str(error)
        net = _net(rank)
        seen["digests"] = _checked_replica_digests(net, 7)
        with torch.no_grad():
            net[0].bias[0] += rank  # rank 1's weights drift
        try:
            _checked_replica_digests(net, 9)
        except ReplicaDivergenceError as error:
            seen["diverged"] = str(error)
        try:
            open_run_dir(Path(odd_run), odd_config)
        except ConfigError as error:
            seen["split"] = str(error)
        seen["final"] = str(pretrain(dict(config), Path(out) / "run"))
        try:  # rank 1 looks at a node-local directory without rank 0's checkpoint: refused before any write
            pretrain(dict(config, steps=3), Path(out) / ("run" if rank == 0 else "node-local-run"))
        except ConfigError as error:
            seen["disagree"] = str(error)
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(seen))
        dist.destroy_process_group()


def test_two_gloo_ranks_agree_on_flags_resume_step_weights_and_batch_split(tmp_path):
    import torch.multiprocessing as mp

    # a one-process run with a global batch of 5: no two processes can resume it
    odd_config = resolve({}, dict(RUN, batch_size=5, steps=1, augment_device=False))
    odd_run = tmp_path / "odd"
    odd_checkpoint = pretrain(dict(odd_config), odd_run)
    config = resolve({}, dict(RUN))
    # spawn, not fork: a child forked after the parent's OpenMP pool started can hang in its first BatchNorm
    mp.start_processes(_rank, args=(str(tmp_path / "init"), str(tmp_path), str(odd_run), odd_config, config),
                       nprocs=2, start_method="spawn")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected_digest = replica_digest(_net(0).state_dict())
    for seen in ranks:
        assert seen["flags"] == [True, True]  # a flag on one rank is everyone's
        assert seen["resume"] == (
            f"the processes see different checkpoints in {tmp_path / 'node-local'} (rank 0: step 4, rank 1: no "
            f"checkpoint). The run directory must be on storage shared by every node (the same path on each), "
            f"fully written before resuming")
        assert seen["digests"] == [expected_digest, expected_digest]  # BN statistics differ, weights agree
        assert seen["diverged"].startswith("at step 9 the processes hold different weights (digests ['0x")
        assert seen["diverged"].endswith("]); the last good checkpoint is kept")
        assert seen["split"] == (f"{odd_checkpoint} trained with a global batch of 5 on 1 processes; 2 processes "
                                 f"cannot split it evenly. Resume on a process count that divides 5")
    run = tmp_path / "run"
    for rank, folder in enumerate([run, tmp_path / "node-local-run"]):
        assert ranks[rank]["disagree"].startswith(f"the processes see different checkpoints in {folder} (rank 0: "
                                                  f"step 2, rank 1: no checkpoint). The run directory must be")
    assert ranks[0]["final"] == ranks[1]["final"] == str(runfiles.checkpoint_path(run, 2))
    state = runfiles.load_checkpoint(runfiles.checkpoint_path(run, 2))
    assert state["world_size"] == 2
    # the digests both replicas agreed on are the saved weights' digest
    assert state["replica_digests"].tolist() == [replica_digest(state["method"])] * 2
    # each rank augmented its own half of the global batch on the device: 2 steps x 8 keys entered the queue
    assert int(state["method"]["queue_ptr"]) == 2 * 8 % 32
    assert [row["step"] for row in runfiles.read_metrics(run) if "loss" in row] == [1, 2]
    # the same global batch resumes on one process, and the log says the process count changed
    pretrain(dict(config, steps=3), run)
    assert [row for row in runfiles.read_metrics(run) if "event" in row] == [
        {"step": 2, "event": "resumed", "world_size": 1, "world_size_before": 2}]
    assert runfiles.load_checkpoint(runfiles.checkpoint_path(run, 3))["world_size"] == 1
