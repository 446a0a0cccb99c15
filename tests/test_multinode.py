"""Two "nodes" on one machine: two torchrun invocations (--nnodes 2, one process each) meeting at a
rendezvous on 127.0.0.1, each in its own working directory (standing for its own machine) and sharing
one run directory (the shared storage).

What is checked, each against something independent of the engine's own bookkeeping:
- exactly one writer: a Python audit hook (sitecustomize on the path of both nodes) logs every write,
  rename and removal under the run directory with the writing process's global rank;
- identical replicas: the digest each rank computed at the checkpoint, against the digest of the saved
  state recomputed here; the MoCo queue pointer equals steps x global batch mod K;
- the result equals a single-node, 2-process run with the same seed and global batch;
- SIGTERM to one node's processes ends the whole run with one consistent checkpoint, and the same
  command on a single node with 2 processes resumes it to the same final weights as an uninterrupted run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from training import runfiles
from training.engine import replica_digest
from zoo.mirror import free_port

ROOT = Path(__file__).resolve().parents[1]
QUEUE, BATCH = 128, 16
ARGS = ["--method", "moco", "--data", "fashion_mnist", "--arch", "r18", "--image-size", "32", "--batch-size",
        str(BATCH), "--no-progress", "--set", f"queue_size={QUEUE}", "--set", "proj_hidden=64",
        "--set", "log_every=1", "--set", "bn_splits=1"]

AUDIT = textwrap.dedent('''
    # test-only: log every write under AUDIT_RUN_DIR with this process's global rank
    import os, sys
    _run, _log = os.environ.get("AUDIT_RUN_DIR"), os.environ.get("AUDIT_LOG_DIR")
    if _run and _log:
        _busy = []
        _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def _under_run(path):
            try:
                path = os.fsdecode(path)
            except TypeError:
                return False
            return os.path.abspath(path).startswith(_run)

        def _hook(event, args):
            if _busy:
                return
            if event == "open":
                path, mode, flags = args
                writing = (any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE_FLAGS))
                paths = [path] if writing else []
            elif event in ("os.rename", "os.replace"):
                paths = [args[0], args[1]]
            elif event in ("os.remove", "os.unlink", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"):
                paths = [args[0]]
            else:
                return
            hits = [os.fsdecode(p) for p in paths if _under_run(p)]
            if hits:
                _busy.append(1)
                try:
                    name = os.path.join(_log, f"pid{os.getpid()}.log")
                    with open(name, "a") as stream:
                        for hit in hits:
                            stream.write(f"{os.environ.get('RANK', 'launcher')} {event} {hit}\\n")
                finally:
                    _busy.pop()
        sys.addaudithook(_hook)
''')


def _env(audit_dir: Path, run_dir: Path, log_dir: Path) -> dict:
    path = os.pathsep.join([str(audit_dir), str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "AUDIT_RUN_DIR": str(run_dir),
            "AUDIT_LOG_DIR": str(log_dir)}


def _node(node_rank: int, port: int, workdir: Path, run_dir: Path, steps: int, env: dict,
          extra: list[str] = ()) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node_rank), "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "training", "pretrain", *ARGS, "--steps", str(steps), "--run-dir", str(run_dir), *extra]
    return subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _single_node(run_dir: Path, steps: int, env: dict, workdir: Path, extra: list[str] = ()):
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "training", "pretrain", *ARGS, "--steps", str(steps), "--run-dir", str(run_dir), *extra]
    return subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)


def _finish(nodes, timeout=600) -> list[tuple[int, str]]:
    results = []
    for node in nodes:
        try:
            output, _ = node.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
            output, _ = node.communicate()
        results.append((node.returncode, output))
    return results


def _writers(log_dir: Path) -> dict[str, set[str]]:
    writers: dict[str, set[str]] = {}
    for log in log_dir.glob("*.log"):
        for line in log.read_text().splitlines():
            rank, _, path = line.split(" ", 2)
            writers.setdefault(rank, set()).add(path)
    return writers


def _final(run_dir: Path) -> dict:
    return runfiles.load_checkpoint(runfiles.latest_checkpoint(run_dir)[1])


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audit")
    (folder / "sitecustomize.py").write_text(AUDIT)
    return folder


@pytest.mark.slow
def test_two_nodes_one_writer_identical_replicas_equal_to_one_node(tmp_path, audit_dir):
    steps = 3
    shared = tmp_path / "shared"
    run_dir, logs = shared / "run", tmp_path / "audit-logs"
    logs.mkdir()
    env = _env(audit_dir, run_dir, logs)
    port = free_port()
    nodes = [_node(rank, port, tmp_path / f"node{rank}", run_dir, steps, env) for rank in (0, 1)]
    for code, output in _finish(nodes):
        assert code == 0, output[-3000:]

    writers = _writers(logs)
    assert set(writers) == {"0"}, {rank: sorted(paths)[:5] for rank, paths in writers.items()}
    written = {Path(p).name for p in writers["0"]}
    assert {"config.yaml", "metrics.jsonl"} <= written and any(name.startswith("step_") for name in written)
    for rank in (0, 1):  # nothing lands in a node's own working directory
        assert not any((tmp_path / f"node{rank}").iterdir())

    state = _final(run_dir)
    assert state["world_size"] == 2 and state["step"] == steps
    digests = state["replica_digests"].tolist()
    assert len(digests) == 2 and digests[0] == digests[1] == replica_digest(state["method"])
    assert int(state["method"]["queue_ptr"]) == steps * BATCH % QUEUE  # both ranks' keys entered one queue

    reference = tmp_path / "one-node"
    done = _single_node(reference, steps, {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                        tmp_path / "node-single")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    single = _final(reference)["method"]
    for key, value in state["method"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, single[key], rtol=1e-5, atol=1e-6, msg=key)
        else:
            assert torch.equal(value, single[key]), key


def _wait_for_step(run_dir: Path, step: int, nodes, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = runfiles.read_metrics(run_dir) if (run_dir / runfiles.METRICS_FILE).exists() else []
        if any(row.get("step", 0) >= step and "loss" in row for row in rows):
            return
        if any(node.poll() is not None for node in nodes):
            raise AssertionError(f"a node ended early: {_finish(nodes)}")
        time.sleep(0.2)
    raise AssertionError(f"no step {step} logged within {timeout} s")


@pytest.mark.slow
def test_sigterm_to_one_node_then_resume_on_one_node_with_two_processes(tmp_path, audit_dir):
    steps = 30
    run_dir, logs = tmp_path / "shared" / "run", tmp_path / "audit-logs"
    logs.mkdir()
    env = _env(audit_dir, run_dir, logs)
    extra = ["--set", "checkpoint_every=1000"]  # the only mid-run checkpoint is the preemption's
    port = free_port()
    nodes = [_node(rank, port, tmp_path / f"node{rank}", run_dir, steps, env, extra) for rank in (0, 1)]
    _wait_for_step(run_dir, 2, nodes)
    os.killpg(nodes[1].pid, signal.SIGTERM)  # what a scheduler does to a preempted node's processes
    results = _finish(nodes)
    assert all(code != 0 for code, _ in results), results  # the run stopped on both nodes

    kept = runfiles.list_checkpoints(run_dir)
    assert len(kept) == 1, kept  # one consistent checkpoint, written once
    stopped_at = kept[0][0]
    assert 2 <= stopped_at < steps
    state = _final(run_dir)
    assert state["replica_digests"].tolist() == [replica_digest(state["method"])] * 2
    assert any(row.get("event") == "sigterm" for row in runfiles.read_metrics(run_dir))
    assert set(_writers(logs)) == {"0"}

    plain_env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    resumed = _single_node(run_dir, steps, plain_env, tmp_path / "node-single", extra)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    reference = tmp_path / "uninterrupted"
    done = _single_node(reference, steps, plain_env, tmp_path / "node-ref", extra)
    assert done.returncode == 0, done.stderr[-2000:]
    final, expected = _final(run_dir), _final(reference)
    assert final["step"] == steps
    for key, value in expected["method"].items():
        assert torch.equal(final["method"][key], value), key  # resume across a preemption is exact
