"""zoo.fetch against a hand-filled Hugging Face cache (the layout an air-gapped site copies in), offline:
a verified cached file is returned without any download, a corrupt one is removed (blob and link) and
never returned, and a missing one says how to prefetch it."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from zoo.catalog import Entry
from zoo.errors import IntegrityError, NotCachedError
from zoo.fetch import fetch

PAYLOAD = b"trunk bytes " * 50
REVISION = "0123456789abcdef" * 2 + "01234567"


def _entry(payload: bytes = PAYLOAD) -> Entry:
    return Entry("sup-flowers-r18", {"repo_id": "someone/flowers-r18", "revision": REVISION, "files": {
        "model.safetensors": {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload)}}})


def _fill(cache: Path, data: bytes, as_blob: bool = True) -> Path:
    """snapshots/<revision>/model.safetensors, as huggingface_hub writes it (a link to blobs/<sha>)."""
    repo = cache / "models--someone--flowers-r18"
    snapshot = repo / "snapshots" / REVISION / "model.safetensors"
    snapshot.parent.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    if as_blob:
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir()
        blob.write_bytes(data)
        snapshot.symlink_to(os.path.relpath(blob, snapshot.parent))
    else:
        snapshot.write_bytes(data)
    return snapshot


@pytest.mark.parametrize("as_blob", [True, False])
def test_verified_cached_file_is_returned_offline(hub_cache, offline, as_blob):
    snapshot = _fill(hub_cache, PAYLOAD, as_blob)
    assert fetch(_entry(), "model.safetensors") == str(snapshot)
    assert fetch(_entry(), "model.safetensors", revision=REVISION) == str(snapshot)
    # an explicit expectation overrides the catalog's
    other = b"other"
    with pytest.raises(IntegrityError):
        fetch(_entry(), "model.safetensors", expected={"sha256": hashlib.sha256(other).hexdigest(), "size": 5})


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_removed_and_refused_offline(hub_cache, offline, damage):
    snapshot = _fill(hub_cache, PAYLOAD)
    blob = Path(os.path.realpath(snapshot))
    data = bytearray(PAYLOAD)
    if damage == "flip":
        data[7] ^= 0xFF
    else:
        data = data[:100]
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        fetch(_entry(), "model.safetensors")
    message = str(caught.value)
    assert message.startswith("sup-flowers-r18: the cached model.safetensors was corrupt (sha256/size mismatch) "
                              "and was removed, and a fresh copy cannot be fetched now.")
    assert "zoo download sup-flowers-r18" in message and "someone/flowers-r18" in message
    assert not blob.exists() and not os.path.lexists(snapshot)


def test_missing_file_offline_says_how_to_prefetch(hub_cache, offline):
    with pytest.raises(NotCachedError) as caught:
        fetch(_entry(), "model.safetensors")
    message = str(caught.value)
    assert message.startswith("sup-flowers-r18: cannot get model.safetensors from someone/flowers-r18@")
    assert "It is not in the local cache and HF_HUB_OFFLINE is set" in message
    assert "Prefetch it while online with `zoo download sup-flowers-r18`" in message
    assert "HF_ENDPOINT at a mirror that serves someone/flowers-r18." in message
    assert message.endswith("(LocalEntryNotFoundError)")
    assert not list(hub_cache.rglob("model.safetensors"))


@pytest.mark.parametrize("bad", ["", "-x", "a..b", "main.lock", "v1/", "v1.", "a b", 7, "x" * 201])
def test_check_revision_refuses_what_is_not_a_commit_or_ref(bad):
    from zoo.errors import InvalidArgumentError, shorten
    from zoo.fetch import check_revision

    with pytest.raises(InvalidArgumentError) as caught:
        check_revision(_entry(), bad)
    assert str(caught.value) == (f"revision must be a commit hash (40 hex characters) or a branch/tag name, not "
                                 f"{shorten(bad)}; the catalog pins sup-flowers-r18 at {REVISION}")


def test_check_revision_warns_only_for_unpinned_refs():
    import warnings

    from zoo.errors import UnpinnedRevisionWarning
    from zoo.fetch import check_revision

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_revision(_entry(), None) is None
        assert check_revision(_entry(), REVISION) == REVISION
        assert check_revision(_entry(), "f" * 40) == "f" * 40
    with pytest.warns(UnpinnedRevisionWarning) as caught:
        assert check_revision(_entry(), "main") == "main"
    assert str(caught[0].message) == (
        "revision='main' is a branch or tag, not a commit: sup-flowers-r18's files are checked only against the "
        "zoo.json that the server itself returns for it, not against the catalog. Pin a commit (the catalog's is "
        f"{REVISION}) to get files that cannot change.")


def test_offline_revision_lookup_and_fix_text(hub_cache, offline):
    from zoo.fetch import _offline_fix, resolve_revision

    assert resolve_revision(_entry(), "main") == "main"  # offline: the cache's refs decide
    assert resolve_revision(_entry(), REVISION) == REVISION
    assert _offline_fix(_entry()) == (
        "It is not in the local cache and HF_HUB_OFFLINE is set (or the Hub is unreachable). Prefetch it while "
        "online with `zoo download sup-flowers-r18` (uses HF_HOME / HF_HUB_CACHE), or point HF_ENDPOINT at a "
        "mirror that serves someone/flowers-r18.")
