"""Hostile and careless input, the `zoo` command (issue 11, item 20: info, download, verify, ZOO_CATALOG):
every path ends in exit code 2 (or verify's 1) with a short message, never a traceback."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import zoo
from zoo.catalog import resolve
from zoo.cli import main

from ._other_user import make_read_only, remove, run_unprivileged, shared_folder

NAME = "sup-imagenet-mnv2"


def _exit(args, capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 1200, err
    return code, err


def _folder(tmp_path: Path, config=None, meta=None, weights=True) -> Path:
    folder = tmp_path / "ckpt"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    if meta is not None:
        (folder / "zoo.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    if weights:
        (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


@pytest.mark.parametrize("config, meta, match", [
    ([], None, "JSON object"),
    ({"num_classes": 0}, None, "architecture"),
    ({"architecture": "resnet18"}, [1, 2], "JSON object"),
    ({"architecture": "resnet18"}, "{not json", "not valid JSON"),
    ({"architecture": ["resnet18"]}, None, "architecture"),
])
def test_info_on_malformed_local_folders(tmp_path, capsys, config, meta, match):
    folder = _folder(tmp_path, config, meta)
    code, err = _exit(["info", str(folder)], capsys)
    assert code == 2 and match in err


@pytest.mark.parametrize("trunk", [".", "../ckpt", "{other}"])
def test_info_on_an_overlay_whose_trunk_is_an_overlay_or_itself(tmp_path, capsys, trunk):
    other = tmp_path / "other"
    other.mkdir()
    folder = _folder(tmp_path, None, {"trunk": {"name": str(tmp_path / "ckpt")}, "trunk_sha256": "0" * 64},
                     weights=False)
    (other / "zoo.json").write_text(json.dumps({"trunk": {"name": str(folder)}, "trunk_sha256": "0" * 64}))
    (folder / "zoo.json").write_text(json.dumps({"trunk": {"name": trunk.format(other=other)}, "bn_variants": ["x"],
                                                 "default_bn": "x", "trunk_sha256": "0" * 64}))
    for target in (folder, other):
        code, err = _exit(["info", str(target)], capsys)
        assert code == 2 and "overlay" in err
        with pytest.raises(zoo.CheckpointFormatError):
            zoo.load(target)


@pytest.mark.parametrize("content", ["{not json", "[]", "DIRECTORY", '{"models": {"x-imagenet-r50": {"repo_id": "a/b"}}}',
                                     '{"models": []}', '{"models": {"y": {"repo_id": "a/b", "revision": "0", '
                                     '"timm_arch": "resnet50", "num_classes": 0, "files": {}}}}'])
def test_malformed_zoo_catalog(tmp_path, monkeypatch, capsys, content):
    catalog = tmp_path / "catalog.json"
    if content == "DIRECTORY":
        catalog.mkdir()
    else:
        catalog.write_text(content)
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    for args in (["list"], ["info", NAME], ["download", NAME], ["verify"]):
        code, err = _exit(args, capsys)
        assert code == 2 and str(catalog) in err and "catalog" in err, (args, err)


def test_download_and_verify_of_a_local_folder(tmp_path, capsys):
    folder = _folder(tmp_path, {"architecture": "resnet18"}, {})
    for command in ("download", "verify"):
        code, err = _exit([command, str(folder)], capsys)
        assert code == 2 and "local folder" in err


def test_verify_advice_on_a_read_only_cache_and_download_there(olah, hub_cache, capsys):
    assert main(["download", NAME]) == 0
    entry, _ = resolve(NAME)
    shared = shared_folder()
    try:
        shutil.copytree(hub_cache, shared / "hub", symlinks=True)
        snapshot = shared / "hub" / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / entry.revision
        blob = Path(os.path.realpath(snapshot / "model.safetensors"))
        data = bytearray(blob.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob.write_bytes(bytes(data))
        make_read_only(shared)
        env = {**os.environ, "HF_HOME": str(shared), "HF_HUB_CACHE": str(shared / "hub"), "HOME": str(shared)}
        env.pop("ZOO_HOME")  # default: $HF_HOME/zoo, read-only too
        code = ("import sys\nfrom zoo.cli import main\n"
                f"print('verify', main(['verify', {NAME!r}]), flush=True)\n"
                f"print('download', main(['download', {NAME!r}]), flush=True)\n")
        child = run_unprivileged(["-c", code], env)  # one process for both: each start imports torch
        assert child.returncode == 0, child.stderr[-3000:]
        assert "verify 1" in child.stdout and "read-only" in child.stdout.split("verify 1")[0], child.stdout
        assert "download 2" in child.stdout, child.stdout + child.stderr[-3000:]
        assert "Traceback" not in child.stderr and "read-only" in child.stderr and len(child.stderr) < 2000
        assert blob.read_bytes() == bytes(data)  # nothing removed from someone else's cache
    finally:
        remove(shared)
