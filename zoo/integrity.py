"""sha256 verification that costs ~nothing when nothing changed.

A file is hashed in full once; then a *stamp* (size, mtime_ns, ctime_ns, inode, device) is recorded
under ``$ZOO_HOME/verified`` (default ``$HF_HOME/zoo``). A later check trusts the file only if the
stamp still matches ``stat()``: any write, truncation or replacement changes one of them and forces
a full re-hash. ctime is set by the kernel on every write or metadata change and cannot be set back
by user code, so an in-place edit that restores mtime is still caught. A stamp is written only
after a successful full hash, so a killed download or a half-written file can never be trusted.
Where no stamp can be written (a read-only ZOO_HOME), files are hashed in full on every check.
Stamps are not signatures: whoever can write ZOO_HOME can forge one (see README, Trust model).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import warnings
from pathlib import Path

from .errors import IntegrityError

_CHUNK = 1 << 22


def zoo_home() -> Path:
    explicit = os.environ.get("ZOO_HOME")
    if explicit:
        return Path(explicit)
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(hf_home) / "zoo"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while True:
            read = handle.readinto(buffer)
            if not read:
                break
            digest.update(view[:read])
    return digest.hexdigest()


def _stamp_path(real_path: str, sha256: str) -> Path:
    key = hashlib.sha256(real_path.encode()).hexdigest()[:16]
    return zoo_home() / "verified" / f"{sha256}-{key}.json"


def _signature(stat: os.stat_result) -> dict:
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "ctime_ns": stat.st_ctime_ns, "ino": stat.st_ino,
            "dev": stat.st_dev}


def is_verified(path: str | os.PathLike, sha256: str, size: int | None = None) -> bool:
    """True if `path` has `sha256`; cheap (two stat calls and a tiny read) when a stamp matches."""
    real_path = os.path.realpath(path)
    try:
        stat = os.stat(real_path)
    except FileNotFoundError:
        return False
    if size is not None and stat.st_size != size:
        return False
    stamp = _stamp_path(real_path, sha256)
    try:
        if json.loads(stamp.read_text()) == _signature(stat):
            return True
    except (OSError, ValueError):
        pass
    if sha256_file(real_path) != sha256:
        return False
    _write_stamp(stamp, _signature(stat))
    return True


_warned_read_only: set[str] = set()


def _write_stamp(stamp: Path, signature: dict) -> None:
    temporary = stamp.with_name(f"{stamp.name}.{os.getpid()}.{threading.get_ident()}.tmp")  # unique per thread too
    try:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(signature))
        os.replace(temporary, stamp)  # atomic: concurrent loaders never see half a stamp
    except OSError as error:  # a read-only or full ZOO_HOME: the file was verified, only the shortcut is lost
        try:
            temporary.unlink(missing_ok=True)
        except OSError:
            pass
        folder = str(stamp.parent)
        if folder not in _warned_read_only:
            _warned_read_only.add(folder)
            warnings.warn(f"cannot record verification stamps in {folder} ({error.strerror or error}); files are "
                          f"verified by a full sha256 on every load. Set ZOO_HOME to a writable folder to make "
                          f"repeated loads fast.", RuntimeWarning, stacklevel=3)


def require_verified(path, sha256: str, size: int | None, what: str, fix: str) -> None:
    if not is_verified(path, sha256, size):
        actual_size = os.path.getsize(path) if os.path.exists(path) else None
        raise IntegrityError(
            f"{what}: {path} does not match the expected sha256 {sha256[:12]}... (size {actual_size}, "
            f"expected {size}). {fix}")
