"""Publishing keeps history, validates everything before writing, and never touches anything outside the mirror.

Real parts: the real MobileNetV2 checkpoint folder, git mirrors, olah on loopback, the `zoo` CLI in
subprocesses, 8 real processes writing one catalog.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import ZooError



@pytest.fixture(scope="session")
def default_folder(tmp_path_factory) -> Path:
    """The real default checkpoint (MobileNetV2 + its animals overlay) as an export folder."""
    from zoo.defaults import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("default") / "sup-imagenet-mnv2")


def _copy(folder: Path, target: Path) -> Path:
    shutil.copytree(folder, target)
    return target


def _zoo(*args, env=None, timeout=120):
    """The `zoo` command in a real subprocess (signals, ports, exit status as a shell sees it)."""
    return subprocess.run([sys.executable, "-m", "zoo", *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class _Result:
    def __init__(self, returncode, stderr):
        self.returncode, self.stderr = returncode, stderr


@pytest.fixture
def cli(capsys):
    """The `zoo` command in this process (what the console script runs: sys.exit(main(argv)))."""
    from zoo.cli import main

    def run(*args):
        capsys.readouterr()
        code = main(list(args))
        return _Result(code, capsys.readouterr().err)
    return run


def _retrained(default_folder: Path, target: Path) -> Path:
    """A second version of the model (classifier bias moved): what a retrain then republish looks like."""
    from safetensors.torch import load_file

    from zoo.checkpoint import CONFIG, META, WEIGHTS, read_json, write_checkpoint

    state = load_file(str(default_folder / WEIGHTS))
    state["classifier.bias"] = state["classifier.bias"] + 0.5
    meta = read_json(default_folder / META)
    for key in ("weights", "trunk_sha256", "bn_variants", "format_version", "bn_variant_cfg"):
        meta.pop(key)  # the old BN overlays were bound to the old trunk: the new version has none yet
    return write_checkpoint(target, state, read_json(default_folder / CONFIG), meta)


def test_publish_twice_keeps_history_and_every_pin_loads(olah, mirror_root, hub_cache, default_folder, tmp_path,
                                                        monkeypatch):
    from zoo.publish import publish

    repo_id, name = "zoo-tests/history-mnv2", "sup-imagenet-mnv2-1"  # a name that agrees with the folder
    catalog = tmp_path / "catalog.json"
    first = publish(default_folder, repo_id, mirror=mirror_root, catalog=catalog, name=name)["revision"]
    pinned_first = tmp_path / "catalog-first.json"
    shutil.copyfile(catalog, pinned_first)
    second_folder = _retrained(default_folder, tmp_path / "v2")
    second = publish(second_folder, repo_id, mirror=mirror_root, catalog=catalog, name=name)["revision"]
    assert first != second
    repo = mirror_root / "models" / repo_id
    parents = subprocess.run(["git", "-C", str(repo), "rev-list", "--parents", "-n", "1", second],
                             capture_output=True, text=True, check=True).stdout.split()
    assert parents == [second, first]  # a new commit on top of the old one, not a new repo
    # publishing the same folder again changes nothing: same pin, no empty commit
    assert publish(second_folder, repo_id, mirror=mirror_root, catalog=catalog, name=name)["revision"] == second

    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    expected = {rev: zoo.load(folder, num_classes=None)(x) for rev, folder in
                ((first, default_folder), (second, second_folder))}
    assert not torch.equal(expected[first], expected[second])
    monkeypatch.setenv("ZOO_CATALOG", str(pinned_first))  # an old catalog keeps working after the republish
    assert torch.equal(zoo.load(name, num_classes=None)(x), expected[first])
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    assert zoo.info(name)["revision"] == second
    assert torch.equal(zoo.load(name, num_classes=None)(x), expected[second])
    assert torch.equal(zoo.load(name, num_classes=None, revision=first)(x), expected[first])
    history = json.loads(catalog.read_text())["models"][name]["history"]
    assert [h["revision"] for h in history] == [first]  # the old pin's own hashes verify revision=first


def test_prepare_mirror_refuses_a_mirror_holding_an_older_publication_and_leaves_it_alone(default_folder, tmp_path):
    """A workdir kept from an older release (zoo-demo's .zoo-demo/mirror) holds another first commit: publishing on
    top of it cannot give the catalog's pin, so say which folder to move, before writing anything."""
    from zoo.defaults import REPO_ID, prepare_mirror
    from zoo.mirror import head_commit
    from zoo.publish import publish_to_mirror

    old = publish_to_mirror(_retrained(default_folder, tmp_path / "old"), tmp_path / "mirror", REPO_ID)
    with pytest.raises(ZooError, match="older publication.*move that folder away") as error:
        prepare_mirror(tmp_path / "mirror")
    assert old[:12] in str(error.value)
    assert head_commit(tmp_path / "mirror", REPO_ID) == old  # nothing committed on top
    assert prepare_mirror(tmp_path / "fresh") == head_commit(tmp_path / "fresh", REPO_ID) == zoo.info(
        "sup-imagenet-mnv2")["revision"]
    assert prepare_mirror(tmp_path / "fresh") == head_commit(tmp_path / "fresh", REPO_ID)  # rerun: same pin


def test_publish_validates_the_folder_before_writing(default_folder, tmp_path, cli):
    mirror, catalog = tmp_path / "mirror", tmp_path / "catalog.json"
    cases = {}
    cases["no weights"] = _copy(default_folder, tmp_path / "no-weights")
    (cases["no weights"] / "model.safetensors").unlink()
    cases["tampered"] = _copy(default_folder, tmp_path / "tampered")
    with open(cases["tampered"] / "model.safetensors", "r+b") as handle:
        handle.seek(5000)
        byte = handle.read(1)
        handle.seek(5000)
        handle.write(bytes([byte[0] ^ 0xFF]))
    cases["stray file"] = _copy(default_folder, tmp_path / "stray")
    (cases["stray file"] / "notes.pkl").write_bytes(b"not recorded anywhere")
    cases["not a folder"] = default_folder / "model.safetensors"
    cases["no name"] = _copy(default_folder, tmp_path / "no-name")
    meta = json.loads((cases["no name"] / "zoo.json").read_text())
    del meta["name"]
    (cases["no name"] / "zoo.json").write_text(json.dumps(meta))
    for label, folder in cases.items():
        result = cli("publish", str(folder), "--mirror", str(mirror), "--repo-id", "lab/model",
                     "--catalog", str(catalog))
        assert result.returncode == 2, (label, result.stderr[-2000:])
        assert "Traceback" not in result.stderr and len(result.stderr) < 1000, label
        assert not (mirror / "models").exists(), f"{label}: something was published"
        assert not catalog.exists(), f"{label}: the catalog was written"
    assert "changed after export" in cli("publish", str(cases["tampered"]), "--mirror", str(mirror),
                                         "--repo-id", "lab/model").stderr


REPO_IDS = ["../../somewhere", "", ".", "lab", "lab/a/b", "lab/..", "../lab", "lab/na--me", "lab/name.git",
            "x" * 60 + "/" + "y" * 60, "lab/-name", "/abs/path", "lab/../../x"]


def test_repo_ids_follow_the_hub_rules_and_nothing_outside_is_touched(default_folder, tmp_path, cli):
    mirror = tmp_path / "site" / "mirror"
    outside = tmp_path / "site" / "somewhere"
    outside.mkdir(parents=True)
    (outside / "precious.txt").write_text("keep me")
    existing = mirror / "models" / "lab" / "kept"
    existing.mkdir(parents=True)
    (existing / "marker").write_text("an already published repo")
    for repo_id in REPO_IDS:
        result = cli("publish", str(default_folder), "--mirror", str(mirror), "--repo-id", repo_id)
        assert result.returncode == 2, (repo_id, result.stderr[-2000:])
        assert "org/name" in result.stderr or "not a valid Hub name" in result.stderr or "96" in result.stderr
        assert (outside / "precious.txt").read_text() == "keep me", repo_id
        assert (existing / "marker").exists(), repo_id
        assert sorted(p.name for p in (mirror / "models").iterdir()) == ["lab"], repo_id
        assert sorted(p.name for p in (mirror / "models" / "lab").iterdir()) == ["kept"], repo_id


def test_a_symlinked_org_leading_out_of_the_mirror_is_refused(default_folder, tmp_path):
    from zoo.publish import publish

    mirror, outside = tmp_path / "mirror", tmp_path / "outside"
    (mirror / "models").mkdir(parents=True)
    outside.mkdir()
    (mirror / "models" / "lab").symlink_to(outside)
    with pytest.raises(ZooError, match="symbolic link"):
        publish(default_folder, "lab/model", mirror=mirror)
    assert list(outside.iterdir()) == []


def test_card_names_cannot_escape_the_cards_folder(default_folder, tmp_path, cli):
    folder = _copy(default_folder, tmp_path / "evil")
    meta = json.loads((folder / "zoo.json").read_text())
    meta["name"] = "../escaped"
    (folder / "zoo.json").write_text(json.dumps(meta))
    cards = tmp_path / "site" / "cards"
    result = cli("publish", str(folder), "--mirror", str(tmp_path / "mirror"), "--repo-id", "lab/model",
                 "--cards", str(cards))
    assert result.returncode == 2 and "not a safe name" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "site" / "escaped.md").exists() and not (tmp_path / "escaped.md").exists()
    assert not (tmp_path / "mirror" / "models").exists()


def _writer(catalog: str, worker: int, rounds: int) -> None:
    from zoo.catalog import PACKAGED, update_catalog

    template = json.loads(PACKAGED.read_text())["models"]["sup-imagenet-mnv2"]
    for round_ in range(rounds):
        update_catalog(catalog, f"m{worker}-r{round_}", {**template, "repo_id": f"lab/m{worker}",
                                                         "revision": f"{round_:040d}"})


def test_eight_concurrent_catalog_writers_lose_nothing(tmp_path):
    catalog = tmp_path / "catalog.json"
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_writer, args=(str(catalog), w, 6)) for w in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * 8
    models = json.loads(catalog.read_text())["models"]
    assert sorted(models) == sorted(f"m{w}-r{r}" for w in range(8) for r in range(6))
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_new_org_on_another_filesystem_than_tmp(default_folder, tmp_path, monkeypatch):
    import tempfile

    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's tmp folder")
    staging_area = Path(tempfile.mkdtemp(dir=other))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(staging_area))  # $TMPDIR on another device
        from zoo.publish import publish

        commit = publish(default_folder, "new-org/model", mirror=tmp_path / "mirror")["revision"]
        assert len(commit) == 40 and (tmp_path / "mirror" / "models" / "new-org" / "model" / ".git").is_dir()
    finally:
        shutil.rmtree(staging_area, ignore_errors=True)


def test_serve_refuses_a_busy_port_and_a_missing_root(mirror_root, tmp_path, cli):
    result = cli("serve", str(tmp_path / "nonexistent"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("serve", str(empty))
    assert result.returncode == 2 and "not a mirror root" in result.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        try:
            result = _zoo("serve", str(mirror_root), "--port", str(port), timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("zoo serve on a busy port kept running as if it served")
    assert result.returncode == 2 and "already in use" in result.stderr


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_olah_on_sigterm_and_sigint(mirror_root, stop):
    child = subprocess.Popen([sys.executable, "-m", "zoo", "serve", str(mirror_root)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert "serving" in line, child.stderr.read()[-2000:] if child.poll() is not None else line
        port = int(line.split("http://127.0.0.1:")[1].split(";")[0])
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        child.send_signal(stop)
        assert child.wait(30) == 0, child.stderr.read()[-3000:]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"olah still answers on port {port} after zoo serve got {stop.name}")
    finally:
        if child.poll() is None:
            child.kill()


def test_hub_404_is_exit_2_with_a_fix(olah, hub_cache, tmp_path, cli, monkeypatch):
    from zoo.catalog import resolve

    entry = json.loads(json.dumps(resolve("sup-imagenet-mnv2")[0].data))
    entry["repo_id"] = "zoo-tests/not-on-this-server"
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": {"absent-imagenet-mnv2": entry}}))
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    for command in (["download", "absent-imagenet-mnv2"], ["card", "absent-imagenet-mnv2"]):
        result = cli(*command)
        assert result.returncode == 2, result.stderr[-2000:]
        assert "Traceback" not in result.stderr and "HF_ENDPOINT" in result.stderr


def test_hub_publish_path_validates_first_and_a_read_only_server_is_a_clear_error(olah, default_folder, tmp_path,
                                                                                   cli, monkeypatch):
    broken = _copy(default_folder, tmp_path / "broken")
    (broken / "config.json").unlink()
    result = cli("publish", str(broken), "--hub", "--endpoint", "http://127.0.0.1:9", "--repo-id", "lab/model")
    assert result.returncode == 2 and "config.json" in result.stderr  # the folder, before any network
    # olah mirrors but takes no uploads: HfApi.create_repo is refused, and we say what to do
    monkeypatch.setenv("HF_TOKEN", "hf_" + "x" * 30)
    result = cli("publish", str(default_folder), "--hub", "--endpoint", olah, "--repo-id", "lab/model")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "did not accept" in result.stderr and "--mirror" in result.stderr


# refused, and a name that does not resolve (huggingface.co on a machine without DNS); a silent blackhole is cut
# off by the same probe's timeout (no test: this sandbox answers every HTTP address)
@pytest.mark.parametrize("endpoint", ["http://127.0.0.1:9", "http://hub.invalid"])
def test_unreachable_hub_fails_fast_with_the_fix(hub_cache, endpoint, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)  # as HF_ENDPOINT would set it at import
    start = time.perf_counter()
    with pytest.raises(zoo.NotCachedError) as caught:
        zoo.load("sup-imagenet-mnv2")
    assert time.perf_counter() - start < 2.0
    assert "zoo download sup-imagenet-mnv2" in str(caught.value) and "unreachable" in str(caught.value)


def test_one_published_step_count_is_taken_without_asking(tmp_path, monkeypatch):
    from zoo.catalog import PACKAGED, resolve

    template = json.loads(PACKAGED.read_text())["models"]["sup-imagenet-mnv2"]
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": {"moco-fashion_mnist-mnv2-2k": template}}))
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    assert resolve("moco-fashion_mnist-mnv2")[0].name == "moco-fashion_mnist-mnv2-2k"
    catalog.write_text(json.dumps({"models": {"moco-fashion_mnist-mnv2-2k": template,
                                              "moco-fashion_mnist-mnv2-4k": template}}))
    with pytest.raises(zoo.UnknownNameError, match="pick one"):
        resolve("moco-fashion_mnist-mnv2")
