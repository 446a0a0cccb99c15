"""Run a child process as a user who cannot write a given folder (a shared, read-only cache).

As root, file modes do not stop writes, so the child drops to the unprivileged uid/gid 65534
("nobody"); as another user, removing the write bits is enough. The folder handed over is made
world-readable so the child can read it."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

NOBODY = 65534
ROOT = Path(__file__).resolve().parents[1]


def shared_folder() -> Path:
    """A fresh world-readable folder outside pytest's private (0700) tmp tree."""
    folder = Path(tempfile.mkdtemp(prefix="zoo-shared-"))
    folder.chmod(0o755)
    return folder


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod((mode | stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH | (0o111 if path.is_dir() else 0))
                   & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def remove(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(folder, ignore_errors=True)


def run_unprivileged(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    """`python args...` as a user without write access to read-only folders (as root: setpriv to nobody)."""
    env = {**env, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            import pytest
            pytest.skip("running as root without setpriv (util-linux): cannot act as an unprivileged user")
        prefix = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd="/")
