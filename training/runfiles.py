"""The run directory: resolved config, step checkpoints, metrics log — every write atomic.

    RUN_DIR/config.yaml              the resolved recipe (written once, before step 0)
    RUN_DIR/checkpoints/step_N.pt    model, optimizer, queue, RNG states, step (the data position)
    RUN_DIR/metrics.jsonl            one JSON object per line
A file is written to a temporary sibling, flushed to disk and renamed, so a crash or kill leaves
the previous complete version, never a truncated one.
"""
from __future__ import annotations

import io
import json
import os
import re
import tempfile
from pathlib import Path

import torch
import yaml

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
_STEP_FILE = re.compile(r"^step_(\d+)\.pt$")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_config(run_dir: Path, config: dict) -> None:
    atomic_write_bytes(run_dir / CONFIG_FILE, yaml.safe_dump(config, sort_keys=True).encode())


def read_config(run_dir: Path) -> dict:
    return yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}.pt"


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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = checkpoint_path(run_dir, step)
    atomic_write_bytes(path, buffer.getvalue())
    for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    # our own files, but weights_only=True still refuses arbitrary pickled code
    return torch.load(path, map_location="cpu", weights_only=True)


class MetricsLog:
    def __init__(self, run_dir: Path, enabled: bool = True):
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint we resume from (they will be redone)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_bytes(self.path, ("\n".join(kept) + "\n" if kept else "").encode())

    def write(self, **values) -> None:
        if self.enabled:
            with open(self.path, "a") as stream:  # one short line per write: appended whole
                stream.write(json.dumps(values, sort_keys=True) + "\n")


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
