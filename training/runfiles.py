"""The run directory: resolved config, step checkpoints, metrics log — every write atomic.

    RUN_DIR/config.yaml                   the resolved recipe (rewritten at each start, checked on resume)
    RUN_DIR/run.json                      the run's identity (a random id, written once)
    RUN_DIR/checkpoints/step_N.pt         model, optimizer, queue, RNG states, step (the data position), run id
    RUN_DIR/checkpoints/step_N.pt.json    the checkpoint's sha256 and size, written before it
    RUN_DIR/metrics.jsonl                 one JSON object per line
A file is written to a temporary sibling, flushed to disk and renamed, so a crash or kill leaves
the previous complete version, never a truncated one. A checkpoint is read only after its bytes
match the recorded sha256 (flipped bytes, a torn copy), and resuming refuses a checkpoint that
another run wrote. Temporaries left by a killed write are removed when a run starts.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import sys
import tempfile
import uuid
from pathlib import Path

import torch
import yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"  # held by the one process training the run (sole_trainer)
CHECKSUM_SUFFIX = ".json"  # step_N.pt -> step_N.pt.json
BAD_SUFFIX = ".bad"  # a checkpoint that failed verification is set aside as step_N.pt.bad
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")
# what atomic_write_bytes leaves when killed between mkstemp and rename: ".<name>.<random>"
_TEMPORARY = re.compile(r"^\.(step_\d+\.pt(\.json)?|config\.yaml|metrics\.jsonl|run\.json)\..+$")
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class RunFileError(Exception):
    """A run directory problem the user must act on; the message names the file and the fix."""


class CheckpointError(RunFileError):
    """A checkpoint that does not verify (checksum, unreadable) or that belongs to another run."""


class StorageFullError(RunFileError):
    """No space (or quota, or file-size limit) to write a run file; the previous version is intact."""


def say(message: str) -> None:
    print(f"training: {message}", file=sys.stderr, flush=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as error:
        _raise_if_full(error, path, len(data))
        raise
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            _raise_if_full(error, path, len(data))
        raise


def _raise_if_full(error: OSError, path: Path, size: int) -> None:
    if error.errno in _FULL:
        raise StorageFullError(
            f"cannot write {path} ({size / 1e6:.1f} MB): {os.strerror(error.errno)}. Nothing was half-written: the "
            f"previous version of the file (and the last checkpoint) is intact. Free space on that disk (or raise "
            f"the quota / file-size limit) and rerun the same command to resume.") from None


class RunInUseError(RunFileError):
    """Another process is training this run directory."""


@contextlib.contextmanager
def sole_trainer(run_dir: Path, enabled: bool = True):
    """Hold the run directory's lock while training: a second trainer started on the same directory (the same
    command twice, two schedulers) would interleave checkpoints and metrics, so it is refused at once. The OS
    releases the lock when its process dies, so a killed run never leaves a stale lock behind. Under DDP only
    rank 0 takes it (the other ranks share rank 0's run)."""
    if not enabled:
        yield
        return
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    if path.is_symlink():  # opening it would truncate whatever it points to
        raise RunFileError(f"{path} is a symbolic link; remove the link (not its target) and rerun")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunInUseError(f"{run_dir} is being trained by another process right now; wait for it to finish (or "
                            "stop it: it checkpoints on SIGTERM) and rerun to resume, or use another run directory"
                            ) from None
    try:
        yield
    finally:
        lock.release()
        if created and [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:  # refused before writing: leave nothing
            path.unlink(missing_ok=True)
            run_dir.rmdir()


def run_identity(run_dir: Path) -> str | None:
    path = Path(run_dir) / RUN_FILE
    try:
        value = json.loads(path.read_text()).get("run_id")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        raise RunFileError(f"{path} is not readable JSON with a run_id; restore it, or use a new run directory")
    return value if isinstance(value, str) else None


def write_config(run_dir: Path, config: dict) -> None:
    """Start (or restart) a run: remove stale temporaries, give it an identity once, record its recipe."""
    run_dir = Path(run_dir)
    remove_stale_temporaries(run_dir)
    atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True).encode())
    if run_identity(run_dir) is None:
        atomic_write_bytes(run_dir / RUN_FILE, json.dumps({"run_id": uuid.uuid4().hex}).encode())


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporaries of writes that were killed (one per kill, as large as a checkpoint): removed.
    Only names our own writes create are touched; a link is removed as a link."""
    removed = []
    for folder in (Path(run_dir), Path(run_dir) / CHECKPOINT_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if _TEMPORARY.match(path.name) and (path.is_symlink() or path.is_file()):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        say(f"removed {len(removed)} temporary file(s) left by interrupted writes in {run_dir}")
    return removed


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG_FILE
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise RunFileError(f"{path} is not valid YAML ({error}); restore it or use a new run directory") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path} does not hold a recipe mapping; restore it or use a new run directory")
    return data


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


def checksum_path(path: Path) -> Path:
    return Path(f"{path}{CHECKSUM_SUFFIX}")


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))]
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> tuple[int, Path] | None:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write step N's checkpoint with its checksum and the run's identity; keep the newest `keep`."""
    import hashlib

    state = {**state, "run_id": run_identity(run_dir)}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    path = checkpoint_path(run_dir, step)
    record = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "step": step, "run_id": state["run_id"]}
    # the checksum first: a kill between the two leaves an orphan record, never an unverifiable checkpoint
    atomic_write_bytes(checksum_path(path), json.dumps(record).encode())
    atomic_write_bytes(path, data)
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
        checksum_path(old).unlink(missing_ok=True)
    return path


def verify_checkpoint(path: Path) -> None:
    """Raise CheckpointError unless the file matches the sha256 recorded when it was written."""
    from zoo.integrity import sha256_file

    path = Path(path)
    record_path = checksum_path(path)
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        say(f"{path} has no checksum file ({record_path.name}; written by a version before checksums): "
             f"it is not verified")
        return
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{record_path} is unreadable ({error})") from None
    try:
        size = path.stat().st_size
        actual = sha256_file(path) if size == record.get("size") else None
    except OSError as error:
        raise CheckpointError(f"{path} cannot be read ({error.strerror or error})") from None
    if actual is None or actual != record.get("sha256"):
        raise CheckpointError(f"{path} does not match the checksum recorded when it was written "
                              f"({size} bytes, expected {record.get('size')}; sha256 differs): it was changed, "
                              f"truncated or replaced")


def load_checkpoint(path: Path, verify: bool = True) -> dict:
    """A checkpoint's state, after checking its bytes; weights_only=True refuses pickled code."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torn zip, garbage, a pickle that needs code: all "cannot be read"
        raise CheckpointError(f"{path} cannot be read as a checkpoint ({type(error).__name__}: "
                              f"{str(error)[:200]})") from None
    if not isinstance(state, dict) or "step" not in state or "method" not in state:
        raise CheckpointError(f"{path} is not a training checkpoint (no step/method state)")
    return state


def load_resumable(run_dir: Path, set_aside: bool = True) -> dict | None:
    """The newest checkpoint of this run that verifies, falling back past bad ones with a message.

    A bad checkpoint (checksum, torn, unreadable) is set aside as step_N.pt.bad (by rank 0) so
    it is neither resumed nor kept in place of good ones. A checkpoint written by another run
    (its run id differs from run.json's) is refused: the user decides what it is doing there."""
    run_dir = Path(run_dir)
    own_id = run_identity(run_dir)
    checkpoints = list_checkpoints(run_dir)
    skipped = []
    for step, path in reversed(checkpoints):
        try:
            state = load_checkpoint(path)
        except CheckpointError as error:
            skipped.append(path)
            say(f"{error}; falling back to the previous checkpoint")
            if set_aside:
                try:
                    os.replace(path, f"{path}{BAD_SUFFIX}")
                    checksum_path(path).unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
            continue
        theirs = state.get("run_id")
        if own_id is not None and theirs is not None and theirs != own_id:
            raise CheckpointError(f"{path} was written by another run (run id {str(theirs)[:12]}, this run is "
                                  f"{own_id[:12]} in {run_dir / RUN_FILE}); it is not resumed. Move it out of "
                                  f"{path.parent} and rerun.")
        if int(state["step"]) != step:
            raise CheckpointError(f"{path} holds step {state['step']}, not {step}: renamed by hand? Move it out of "
                                  f"{path.parent} and rerun.")
        if skipped:
            say(f"resuming from {path} (step {step}); {len(skipped)} newer checkpoint(s) did not verify"
                 + (f" and were set aside as *.pt{BAD_SUFFIX}" if set_aside else ""))
        state["path"] = path
        return state
    if checkpoints:
        raise CheckpointError(f"no checkpoint in {run_dir / CHECKPOINT_DIR} verifies (see above); to start over, "
                              f"use a new run directory")
    return None


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line, row in _parse_metrics(self.path, keep_text=True) if row.get("step", 0) <= step]
        atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def write(self, **values) -> None:
        if self.enabled:
            with open(self.path, "a") as stream:  # one short line per write: appended whole
                stream.write(json.dumps(values, sort_keys=True) + "\n")


def _parse_metrics(path: Path, keep_text: bool = False) -> list:
    """(line, row) pairs or rows; a torn last line (a kill mid-append) is dropped with a message, a bad line
    elsewhere is an error naming the file and the line."""
    lines = [line for line in path.read_text(errors="replace").splitlines()]
    numbered = [(number, line) for number, line in enumerate(lines, 1) if line.strip()]
    parsed = []
    for index, (number, line) in enumerate(numbered):
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if index == len(numbered) - 1:
                say(f"{path}: line {number} is torn (an interrupted write) and is ignored")
                break
            raise RunFileError(f"{path}: line {number} is not a JSON object ({error}); fix or delete that line "
                               f"and rerun") from None
        parsed.append((line, row) if keep_text else row)
    return parsed


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return _parse_metrics(path) if path.exists() else []
