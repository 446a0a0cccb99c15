"""Verified files from the Hub: huggingface_hub does the download, cache and locking; we check sha256.

Warm path: ``try_to_load_from_cache`` (filesystem only) + a stamp check (integrity.py), so a load
of a cached, unchanged file makes no network call and hashes nothing. A corrupt or truncated
cached blob is re-fetched once; if the fresh copy is also wrong, IntegrityError.
"""
from __future__ import annotations

import os

from .catalog import Entry
from .errors import IntegrityError, NotCachedError
from .integrity import is_verified


def _offline_fix(entry: Entry) -> str:
    return (f"It is not in the local cache and HF_HUB_OFFLINE is set (or the Hub is unreachable). "
            f"Prefetch it while online with `zoo download {entry.name}` (uses HF_HOME / HF_HUB_CACHE), or point "
            f"HF_ENDPOINT at a mirror that serves {entry.repo_id}.")


def _drop_cached(path: str) -> None:
    blob = os.path.realpath(path)
    for victim in (blob, path):
        try:
            os.remove(victim)
        except FileNotFoundError:
            pass


def fetch(entry: Entry, filename: str, revision: str | None = None, expected: dict | None = None) -> str:
    """Local path of a verified copy of `filename` from the entry's repo at its pinned revision."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    revision = revision or entry.revision
    expected = expected or entry.file(filename)
    sha256, size = expected["sha256"], expected["size"]
    cached = try_to_load_from_cache(entry.repo_id, filename, revision=revision)
    dropped_corrupt = False
    if isinstance(cached, str):
        if is_verified(cached, sha256, size):
            return cached
        _drop_cached(cached)  # corrupt or truncated: never trust it, fetch once more below
        dropped_corrupt = True
    for attempt in range(2):
        try:
            path = hf_hub_download(entry.repo_id, filename, revision=revision, force_download=attempt > 0)
        except LocalEntryNotFoundError as error:
            if dropped_corrupt:
                raise IntegrityError(f"{entry.name}: the cached {filename} was corrupt (sha256/size mismatch) and was "
                                     f"removed, and a fresh copy cannot be fetched now. {_offline_fix(entry)}") from None
            raise NotCachedError(f"{entry.name}: cannot get {filename} from {entry.repo_id}@{revision[:12]}. "
                                 f"{_offline_fix(entry)} ({type(error).__name__})") from None
        if is_verified(path, sha256, size):
            return path
        _drop_cached(path)
    raise IntegrityError(f"{entry.name}: {filename} from {entry.repo_id}@{revision[:12]} does not match the "
                         f"catalog (sha256 {sha256[:12]}..., {size} bytes) even after a fresh download. The server "
                         f"or mirror serves different bytes than were published; report it, do not use them.")
