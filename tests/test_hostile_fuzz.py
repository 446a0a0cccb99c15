"""The input contract, fuzzed (issue 11): zoo.load / zoo.info / the `zoo` command on generated hostile input.

Every failure is a ZooError (from the CLI: exit 2, or argparse's usage exit 2) with a message under
1,000 characters; nothing is written outside the user's cache (the working directory and the
folders around stay as they were); a returned model has exactly the pinned weights (the catalog's
sha256, or the local folder's zoo.json). hypothesis runs derandomized (the same examples every run)
without its example database, so the test is repeatable and writes nothing of its own.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

# hypothesis keeps caches in ./.hypothesis unless told otherwise: the tests write nothing in the checkout
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "zoo-hypothesis"))

import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import zoo  # noqa: E402
from zoo.catalog import resolve  # noqa: E402
from zoo.cli import main  # noqa: E402
from zoo.errors import ZooError  # noqa: E402

NAME = "sup-imagenet-mnv2"
REAL = [NAME, "base-animals-mnv2", "sup-imagenet-mnv2-1k", "hpt-chexpert-r50", "moco-imagenet-r50",
        "hptbn-animals-mnv2", "supervised-imagenet-mobilenetv2", "base-imagenet-mnv2", "sup-animals-mnv2"]
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))


def _mutate(draw) -> str:
    text = draw(st.sampled_from(REAL))
    for _ in range(draw(st.integers(0, 3))):
        position = draw(st.integers(0, len(text)))
        operation = draw(st.sampled_from(["insert", "delete", "repeat", "swap"]))
        piece = draw(st.sampled_from(["-", "/", "..", "\0", "k", "from", " ", "%s", "é", "-1", "*", "~"]))
        if operation == "insert":
            text = text[:position] + piece + text[position:]
        elif operation == "delete":
            text = text[:position] + text[position + 1:]
        elif operation == "repeat":
            text = text * draw(st.integers(2, 2000))
        else:
            text = text.replace("-", piece, 1)
    return text


@st.composite
def names(draw, folders):
    kind = draw(st.sampled_from(["real", "mutated", "mutated", "text", "pathy", "folder", "folder", "folder",
                                 "special", "other"]))
    if kind == "mutated":
        return _mutate(draw)
    return draw({"real": st.sampled_from(REAL), "text": st.text(max_size=40),
                 "pathy": st.text(alphabet="./-_~\0ab", max_size=20), "folder": st.sampled_from(folders),
                 "special": st.sampled_from(["", ".", "..", "/", "//", "../../etc/passwd", "~", "x" * 100_000,
                                             "-" * 5000]),
                 "other": st.one_of(st.integers(), st.none(), st.binary(max_size=8),
                                    st.lists(st.integers(), max_size=2))}[kind])


ODD = st.one_of(st.none(), st.integers(-3, 3), st.floats(allow_nan=True), st.text(max_size=12), st.booleans())
ARGUMENTS = st.fixed_dictionaries({}, optional={
    "bn": st.one_of(ODD, st.sampled_from(["animals", "chexpert", "Animals", "animals/../x", "x" * 3000])),
    "revision": st.one_of(ODD, st.sampled_from(["main", "0" * 40, "refs/pr/1", "v1.0", "..", "a" * 500])),
    "num_classes": st.one_of(ODD, st.sampled_from([0, None, 7, 10**7, 1000])),
    "device": st.one_of(ODD, st.sampled_from(["cpu", "cuda", "gpu", "meta", "cpu:0", "cuda:99"])),
    "dtype": st.one_of(ODD, st.sampled_from([torch.float16, torch.int64, torch.float64, "float16", torch.bool]))})


def _hostile_folders(root: Path, hub_cache: Path) -> list[str]:
    entry, _ = resolve(NAME)
    snapshot = hub_cache / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / entry.revision
    good = root / "good"
    good.mkdir(parents=True)
    for filename in ("model.safetensors", "config.json", "zoo.json", "README.md"):
        shutil.copyfile(snapshot / filename, good / filename)
    tampered = root / "tampered"
    shutil.copytree(good, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 1
    (tampered / "model.safetensors").write_bytes(bytes(data))
    folders = [good, tampered]
    for label, config, meta in [("list", "[]", None), ("noarch", "{}", None), ("badjson", "{", None),
                                ("badmeta", '{"architecture": "mobilenetv2_100"}', "[1]"),
                                ("garbage", '{"architecture": "mobilenetv2_100"}', None)]:
        folder = root / label
        folder.mkdir()
        (folder / "config.json").write_text(config)
        (folder / "model.safetensors").write_bytes(os.urandom(64))
        if meta is not None:
            (folder / "zoo.json").write_text(meta)
        folders.append(folder)
    loop = root / "loop"
    loop.mkdir()
    (loop / "zoo.json").write_text(json.dumps({"trunk": {"name": "."}, "bn_variants": ["x"], "default_bn": "x"}))
    return [str(f) for f in folders + [loop]]


@pytest.fixture
def arena(olah, hub_cache, tmp_path, monkeypatch):
    """The pinned model cached, hostile folders beside it, and an empty working directory to watch."""
    zoo.load(NAME)
    for filename in ("config.json", "zoo.json", "README.md", "bn/animals.safetensors"):
        zoo.fetch.fetch(resolve(NAME)[0], filename)
    folders = _hostile_folders(tmp_path / "folders", hub_cache)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _tree(tmp_path, skip=("hf-home", "zoo-home"))
    yield folders
    assert not any(work.iterdir()), list(work.iterdir())
    assert _tree(tmp_path, skip=("hf-home", "zoo-home")) == before  # only the cache and ZOO_HOME may change


def _tree(root: Path, skip) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")
            if p.relative_to(root).parts[0] not in skip and p.is_file()}


def _pinned_tensors(name) -> dict:
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        return load_file(str(Path(name) / "model.safetensors"))  # verified against its zoo.json by the load
    entry, _ = resolve(str(name))
    return load_file(zoo.fetch.fetch(entry, "model.safetensors"))


def _check_model(model, name, arguments) -> None:
    state = model.state_dict()
    pinned = _pinned_tensors(name)
    with_overlay = arguments.get("bn") or str(name).startswith("base-")
    for key, value in pinned.items():
        if key.startswith("classifier.") or (with_overlay and "bn" in key.split(".")[-2]):
            continue  # a requested head, or the requested BN statistics
        if key in state:
            assert torch.equal(state[key], value.to(state[key].dtype)), key


def _call(function, name, arguments):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return function(name, **arguments), None
        except ZooError as error:
            assert len(str(error)) < 1000, (name if len(str(name)) < 200 else len(str(name)), str(error)[:300])
            return None, error


@given(data=st.data())
@FUZZ
def test_load_and_info_keep_the_contract(arena, data):
    name = data.draw(names(arena), label="name")
    arguments = data.draw(ARGUMENTS, label="arguments")
    model, _ = _call(zoo.load, name, arguments)
    if model is not None:
        _check_model(model, name, arguments)
    _call(zoo.info, name, {})


COMMANDS = ["list", "info", "download", "verify", "card"]


@given(data=st.data())
@FUZZ
def test_cli_keeps_the_contract(arena, capsys, data):
    command = data.draw(st.sampled_from(COMMANDS), label="command")
    name = data.draw(names(arena).filter(lambda n: isinstance(n, str) and not n.startswith("-")), label="name")
    flags = data.draw(st.lists(st.sampled_from(["--json", "--help", "-x", "--", "--port", "1"]), max_size=2),
                      label="flags")
    tokens = [name, *flags] if data.draw(st.booleans(), label="flags last") else [*flags, name]
    tokens = [token.replace("\0", "") for token in tokens]  # argv cannot carry NUL
    try:
        code = main([command, *tokens])
    except SystemExit as exit:  # argparse: usage error (2) or --help (0)
        code = exit.code
    err = capsys.readouterr().err
    assert code in (0, 1, 2), code
    assert "Traceback" not in err
    if code == 2:
        assert err.strip() and len(err) < 1200 or "usage:" in err, err[:500]
