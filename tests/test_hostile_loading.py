"""Hostile and careless input, cache and loading (issue 11, items 7-13): each test failed before its fix."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo.catalog import resolve
from zoo.errors import (CheckpointFormatError, IntegrityError, InvalidArgumentError, UnknownNameError,
                        UnknownRevisionError, UnpinnedRevisionWarning, UnverifiedCheckpointWarning)
from zoo.integrity import sha256_file

from ._other_user import make_read_only, remove, run_unprivileged, shared_folder

NAME = "sup-imagenet-mnv2"


def _snapshot(cache: Path, filename: str = "model.safetensors") -> Path:
    entry, _ = resolve(NAME)
    return cache / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / entry.revision / filename


def _pinned(filename: str = "model.safetensors") -> str:
    return resolve(NAME)[0].file(filename)["sha256"]


def _state_digest(model: torch.nn.Module) -> str:
    return hashlib.sha256(b"".join(t.numpy().tobytes() for t in model.state_dict().values())).hexdigest()


# 7 -------------------------------------------------------------------------------------------------------------

def test_bad_cached_link_is_removed_never_its_target(olah, hub_cache, tmp_path):
    zoo.load(NAME)
    link = _snapshot(hub_cache)
    precious = tmp_path / "precious.bin"  # a user's file that a hostile link in the cache points at
    precious.write_bytes(b"not a checkpoint, but someone's data" * 1000)
    link.unlink()
    link.symlink_to(precious)
    zoo.load(NAME)  # the bad link is dropped and the file re-fetched (checked below)
    assert precious.read_bytes() == b"not a checkpoint, but someone's data" * 1000
    assert sha256_file(link) == _pinned()


def test_bad_file_behind_a_linked_snapshot_folder_is_not_deleted(olah, hub_cache, tmp_path):
    zoo.load(NAME)
    snapshot = _snapshot(hub_cache).parent
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"someone's file")
    shutil.rmtree(snapshot)
    snapshot.symlink_to(outside, target_is_directory=True)
    with pytest.raises(IntegrityError, match="link"):
        zoo.load(NAME)
    assert (outside / "model.safetensors").read_bytes() == b"someone's file"


# 8 -------------------------------------------------------------------------------------------------------------

def test_read_only_cache_is_usable_and_stamps_go_to_zoo_home(olah, hub_cache):
    reference = _state_digest(zoo.load(NAME, bn="animals"))
    stamps = Path(os.environ["ZOO_HOME"]) / "verified"
    assert len(list(stamps.glob(f"{_pinned()}-*.json"))) == 1  # stamps live in ZOO_HOME, not in the cache
    shared = shared_folder()
    try:
        shutil.copytree(hub_cache, shared / "hub", symlinks=True)
        make_read_only(shared)
        code = ("import hashlib, zoo\n"
                f"m = zoo.load({NAME!r}, bn='animals')\n"
                "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in m.state_dict().values())).hexdigest())\n")
        env = {**os.environ, "HF_HOME": str(shared), "HF_HUB_CACHE": str(shared / "hub"), "HOME": str(shared),
               "HF_HUB_OFFLINE": "1"}
        env.pop("ZOO_HOME")  # default: $HF_HOME/zoo, which is read-only here
        result = run_unprivileged(["-c", code], env)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.strip() == reference
        assert "ZOO_HOME" in result.stderr  # says why every load hashes, and where stamps would go
        assert not (shared / "zoo").exists()
    finally:
        remove(shared)


# 9 -------------------------------------------------------------------------------------------------------------

def test_in_place_edit_that_restores_mtime_is_caught(olah, hub_cache):
    zoo.load(NAME)
    blob = Path(os.path.realpath(_snapshot(hub_cache)))
    before = blob.stat()
    with open(blob, "r+b") as handle:
        handle.seek(before.st_size // 2)
        byte = handle.read(1)
        handle.seek(before.st_size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    os.utime(blob, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = blob.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)
    zoo.load(NAME)  # the ctime moved: re-hashed, found corrupt, re-fetched
    assert sha256_file(_snapshot(hub_cache)) == _pinned()


# 10 ------------------------------------------------------------------------------------------------------------

def _local_copy(hub_cache: Path, target: Path) -> Path:
    target.mkdir()
    snapshot = _snapshot(hub_cache).parent
    for name in ("model.safetensors", "config.json", "zoo.json", "README.md"):
        shutil.copyfile(snapshot / name, target / name)
    return target


def test_local_config_json_is_verified(olah, hub_cache, tmp_path):
    for filename in ("config.json", "zoo.json", "README.md"):
        zoo.fetch.fetch(resolve(NAME)[0], filename)
    zoo.load(NAME)
    folder = _local_copy(hub_cache, tmp_path / "copy")
    assert _state_digest(zoo.load(folder)) == _state_digest(zoo.load(NAME))
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {"act_layer": "relu"}  # same keys and shapes, another network
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(IntegrityError, match="config.json"):
        zoo.load(folder)


def test_folder_without_zoo_json_loads_only_with_a_loud_warning(olah, hub_cache, tmp_path):
    for filename in ("config.json", "zoo.json", "README.md"):
        zoo.fetch.fetch(resolve(NAME)[0], filename)
    zoo.load(NAME)
    folder = _local_copy(hub_cache, tmp_path / "copy")
    (folder / "zoo.json").unlink()
    with pytest.warns(UnverifiedCheckpointWarning, match="NOT verified"):
        zoo.load(folder)


# 11 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["one_element", "negative_var", "nan_mean", "float_count"])
def test_overlay_shapes_and_values_are_checked(olah, hub_cache, tmp_path, damage):
    from safetensors.torch import load_file

    from zoo.bn import overlay_metadata
    from zoo.checkpoint import save_state_dict
    from zoo.fetch import fetch

    entry = resolve(NAME)[0]
    original = fetch(entry, "bn/animals.safetensors")
    overlay, metadata = load_file(original), overlay_metadata(original)
    key = "blocks.1.0.bn1.running_var"
    if damage == "one_element":
        overlay[key] = torch.ones(1)  # copy_ would broadcast it over every channel
    elif damage == "negative_var":
        overlay[key] = -overlay[key]
    elif damage == "nan_mean":
        overlay[key.replace("var", "mean")][0] = float("nan")
    else:
        overlay["bn1.num_batches_tracked"] = torch.tensor(1.5)
    hostile = tmp_path / "hostile.safetensors"
    save_state_dict(overlay, hostile, {k: v for k, v in metadata.items() if k != "format"})
    model = zoo.load(NAME)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointFormatError, match=key.rsplit(".", 1)[0] if damage != "float_count" else "bn1"):
        zoo.apply_bn(model, hostile, entry.file("model.safetensors")["sha256"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing half-applied


# 12 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("revision", ["not a revision!", "../../etc", "", "x" * 5000, 12, "-rf"])
def test_malformed_revision_is_refused_before_any_request(hub_cache, offline, revision):
    with pytest.raises(InvalidArgumentError, match="revision") as error:
        zoo.load(NAME, revision=revision)
    assert len(str(error.value)) < 1000


@pytest.mark.parametrize("revision", ["0123456789abcdef0123456789abcdef01234567", "no-such-branch"])
def test_unknown_revision_is_a_typed_error_quickly(olah, hub_cache, revision):
    started = time.monotonic()
    with pytest.raises(UnknownRevisionError, match="catalog pins") as error:
        with pytest.warns(UnpinnedRevisionWarning) if not revision[0].isdigit() else _nothing():
            zoo.load(NAME, revision=revision)
    assert time.monotonic() - started < 20
    assert "authenticat" not in str(error.value).lower() and "login" not in str(error.value).lower()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_branch_revision_warns_that_it_is_unpinned(olah, hub_cache):
    with pytest.warns(UnpinnedRevisionWarning, match="not a commit"):
        model = zoo.load(NAME, revision="main")
    assert _state_digest(model) == _state_digest(zoo.load(NAME))


# 13 ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arguments", [
    dict(num_classes=-1), dict(num_classes=2.5), dict(num_classes="10"), dict(num_classes=True),
    dict(num_classes=10**9), dict(dtype="float16"), dict(dtype=torch.int64), dict(device="gpu"),
    dict(device="meta"), dict(device=True), dict(bn=5), dict(bn=""), dict(bn="x" * 100_000)])
def test_arguments_are_checked_before_any_download(hub_cache, offline, arguments):
    # offline with an empty cache: a check made after the download would surface as NotCachedError instead
    with pytest.raises(InvalidArgumentError) as error:
        zoo.load(NAME, **arguments)
    assert len(str(error.value)) < 1000
    assert not any(hub_cache.iterdir())


@pytest.mark.parametrize("name", ["x" * 100_000, "sup-" + "imagenet-" * 20_000 + "mnv2", "moco-" + "y" * 50_000 + "-r50"])
def test_long_names_are_truncated_in_messages(name):
    for call in (zoo.load, zoo.info):
        with pytest.raises(UnknownNameError) as error:
            call(name)
        assert len(str(error.value)) < 1000
