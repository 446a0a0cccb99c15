"""Upstream releases by name: fetched from a real HTTP server on loopback, verified, converted, cached, imported offline."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import re
import threading
import time

import pytest
import torch

import zoo
from tests.layouts import backbone_state, moco_official, openselfsup_moco
from zoo.cli import main as zoo_main
from zoo.errors import IntegrityError, NotCachedError


class _Files(http.server.SimpleHTTPRequestHandler):
    gets: list = []

    def do_GET(self):
        _Files.gets.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """python's http.server on 127.0.0.1 serving a folder of upstream files."""
    root = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def r18():
    return backbone_state("resnet18", seed=11)


def _entry(url, file, fmt, arch="resnet18", **source):
    return {"strategy": "moco", "method": "moco_v2", "arch": arch, "timm_arch": arch, "domain": "imagenet",
            "num_classes": 0, "num_features": 2048 if arch == "resnet50" else 512, "preprocessing": "moco",
            "license": "test", "summary": "test entry", "source_text": f"`{file}` from {url}",
            "source": {"url": f"{url}/{file}", "file": file, "format": fmt, "fetchable": True, **source}}


@pytest.fixture
def upstream_catalog(tmp_path, monkeypatch):
    """Write a catalog with an upstream section, make it active (ZOO_CATALOG) with an empty zoo cache."""
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    path = tmp_path / "catalog.json"

    def write(entries: dict):
        path.write_text(json.dumps({"format_version": 1, "upstream": entries}))
        monkeypatch.setenv("ZOO_CATALOG", str(path))
        return tmp_path / "zoo-home" / "upstream"
    return write


def _sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _converted(name):
    from zoo.catalog import resolve
    from zoo.upstream import cached

    return cached(resolve(name)[0])


def _assert_model_is(model, backbone):
    state = model.state_dict()
    assert set(state) == set(backbone)
    for key, value in backbone.items():
        assert torch.equal(state[key], value), key


def test_r50_openselfsup_moco_fetched_verified_converted_cached(server, upstream_catalog, tmp_path):
    root, url = server
    backbone = backbone_state("resnet50", seed=7)
    torch.save(openselfsup_moco(backbone), root / "moco_r50_800ep.pth")
    sha = _sha256(root / "moco_r50_800ep.pth")
    cache = upstream_catalog({"moco-test-r50": _entry(url, "moco_r50_800ep.pth", "openselfsup-moco", "resnet50",
                                                      sha256=sha)})
    _Files.gets.clear()
    model = zoo.load("moco-test-r50")
    _assert_model_is(model, backbone)  # exactly the source's encoder_q backbone, nothing else
    meta = zoo.info(cache / "moco-test-r50")
    assert meta["lineage"][0] == {"role": "base", "name": "moco_r50_800ep.pth", "url": f"{url}/moco_r50_800ep.pth",
                                  "sha256": sha, "format": "openselfsup-moco", "method": "moco_v2",
                                  "domain": "imagenet", "steps": None}
    assert meta["source_checkpoint"]["sha256"] == sha and "sha256 pinned" in meta["upstream"]["verified_by"]
    cfg = zoo.preprocessing(cache / "moco-test-r50")
    assert (cfg["interpolation"], cfg["crop_pct"], list(cfg["mean"])) == ("bilinear", 0.875, [0.485, 0.456, 0.406])
    again = zoo.load("moco-test-r50")  # from the cache: no second request
    _assert_model_is(again, backbone)
    assert _Files.gets == ["/moco_r50_800ep.pth"]
    leftovers = [p.name for p in cache.iterdir() if p.name not in ("moco-test-r50", ".locks")]
    assert leftovers == []


def test_hash_mismatch_is_refused_and_nothing_is_cached(server, upstream_catalog, r18):
    root, url = server
    torch.save(openselfsup_moco(r18), root / "swapped.pth")
    cache = upstream_catalog({"moco-bad-r18": _entry(url, "swapped.pth", "openselfsup-moco", sha256="ab" * 32)})
    with pytest.raises(IntegrityError, match="not the published file"):
        zoo.load("moco-bad-r18")
    assert [p.name for p in cache.iterdir()] == [".locks"]  # no converted folder, no partial download


def test_publisher_md5_prefix_verifies(server, upstream_catalog, r18):
    root, url = server
    torch.save(moco_official(r18), root / "moco_v2_200ep_pretrain.pth.tar")
    md5 = hashlib.md5((root / "moco_v2_200ep_pretrain.pth.tar").read_bytes()).hexdigest()
    wrong = "0" * 8 if not md5.startswith("0" * 8) else "1" * 8
    upstream_catalog({"good": _entry(url, "moco_v2_200ep_pretrain.pth.tar", "moco", md5_prefix=md5[:8]),
                      "bad": _entry(url, "moco_v2_200ep_pretrain.pth.tar", "moco", md5_prefix=wrong)})
    from zoo.loader import trunk_sha256

    details = zoo.info("good")  # nothing fetched yet: the catalog's record
    assert "trunk_sha256" not in details
    sha = trunk_sha256(details)  # an overlay or a lineage needs the trunk: converts on demand
    details = zoo.info("good")
    assert details["trunk_sha256"] == sha == details["weights"]["model.safetensors"]["sha256"]
    assert details["lineage"][0]["url"] == f"{url}/moco_v2_200ep_pretrain.pth.tar"
    _assert_model_is(zoo.load("good"), r18)
    assert "md5 prefix" in zoo.info(_converted("good"))["upstream"]["verified_by"]
    with pytest.raises(IntegrityError, match=f"publisher lists {wrong}"):
        zoo.load("bad")


def test_offline_names_the_import_command_then_import_works(server, upstream_catalog, r18, offline, tmp_path, capsys):
    root, url = server
    torch.save(moco_official(r18), root / "tofu.pth.tar")
    upstream_catalog({"moco-tofu-r18": _entry(url, "tofu.pth.tar", "moco")})  # no published checksum
    _Files.gets.clear()
    started = time.perf_counter()
    with pytest.raises(NotCachedError) as raised:
        zoo.load("moco-tofu-r18")
    assert time.perf_counter() - started < 2 and _Files.gets == []
    message = str(raised.value)
    assert "zoo import moco-tofu-r18 /path/to/tofu.pth.tar" in message and f"{url}/tofu.pth.tar" in message
    downloaded = tmp_path / "Downloads" / "tofu.pth.tar"
    downloaded.parent.mkdir()
    downloaded.write_bytes((root / "tofu.pth.tar").read_bytes())
    assert zoo_main(["import", "moco-tofu-r18", str(downloaded)]) == 0
    _assert_model_is(zoo.load("moco-tofu-r18"), r18)
    meta = zoo.info(_converted("moco-tofu-r18"))
    assert meta["upstream"]["verified_by"].startswith("trust on first use")
    assert meta["lineage"][0]["sha256"] == _sha256(downloaded)
    other = tmp_path / "Downloads" / "other.pth.tar"
    torch.save(moco_official(backbone_state("resnet18", seed=12)), other)
    capsys.readouterr()
    assert zoo_main(["import", "moco-tofu-r18", str(other)]) == 2  # trust on first use: a different file is refused
    assert "a different source file" in capsys.readouterr().err
    assert zoo_main(["import", "moco-tofu-r18", str(tmp_path / "missing.pth")]) == 2
    assert zoo_main(["import", "sup-imagenet-mnv2", str(downloaded)]) == 2  # not an upstream name


def test_concurrent_first_loads_download_once_and_agree(server, upstream_catalog, r18):
    """Four threads race on an uncached name: the file lock makes one download + conversion; all get the same model."""
    from concurrent.futures import ThreadPoolExecutor

    root, url = server
    torch.save(moco_official(r18), root / "race.pth.tar")
    cache = upstream_catalog({"moco-race-r18": _entry(url, "race.pth.tar", "moco")})
    stale = cache / ".moco-race-r18.abc123xy.incomplete"  # what a killed download leaves behind
    cache.mkdir(parents=True)
    stale.write_bytes(b"partial")
    _Files.gets.clear()
    with ThreadPoolExecutor(4) as pool:
        models = list(pool.map(lambda _: zoo.load("moco-race-r18"), range(4)))
    assert _Files.gets == ["/race.pth.tar"]
    for model in models:
        _assert_model_is(model, r18)
    assert not stale.exists() and sorted(p.name for p in cache.iterdir()) == [".locks", "moco-race-r18"]


def test_http_error_and_unfetchable_entries_name_the_fix(server, upstream_catalog):
    _, url = server
    entries = {"gone": _entry(url, "missing.pth", "moco"),
               "tf-only": {**_entry(url, "r50_1x_sk0.pth", "simclrv2-pytorch"), "source": {
                   "url": f"{url}/ckpt/", "file": "r50_1x_sk0.pth", "format": "simclrv2-pytorch", "fetchable": False,
                   "why_not_fetchable": "TensorFlow checkpoint", "how_to_get": "Convert it with convert.py"}}}
    upstream_catalog(entries)
    with pytest.raises(NotCachedError, match="answered HTTP 404.*zoo import gone /path/to/missing.pth"):
        zoo.load("gone")
    with pytest.raises(NotCachedError, match="TensorFlow checkpoint. Convert it with convert.py.*zoo import tf-only"):
        zoo.load("tf-only")


def test_malformed_upstream_entries_are_catalog_errors(upstream_catalog):
    from zoo.errors import CatalogError

    upstream_catalog({"no-source": {"timm_arch": "resnet18"},
                      "bad-url": _entry("file:///etc", "passwd", "moco"),
                      "Esc..ape": _entry("http://127.0.0.1:9", "x.pth", "moco"),
                      "bad-hash": _entry("http://127.0.0.1:9", "x.pth", "moco", sha256="../../etc")})
    for name, problem in [("no-source", "a 'source' object"), ("bad-url", "source.url"),
                          ("Esc..ape", "a name of lowercase"), ("bad-hash", "source.sha256")]:
        with pytest.raises(CatalogError, match=re.escape(problem)):
            zoo.load(name)


def test_packaged_upstream_section_is_complete_and_honest():
    """The real entries: URL, converter, preprocessing matching the preset, what verifies them; loadable offline info."""
    from zoo.catalog import catalog
    from zoo.convert import FORMATS
    from zoo.presets import preset, pretrained_cfg_of

    section = catalog()["upstream"]
    assert {"moco-imagenet-r50", "moco-imagenet-r50-200ep", "mocov1-imagenet-r50-200ep", "simclr-imagenet-r50",
            "simclrv1-imagenet-r50"} <= set(section)
    md5 = {"moco-imagenet-r50": "a04e12f8", "moco-imagenet-r50-200ep": "59fd9945", "mocov1-imagenet-r50-200ep": "b251726a"}
    for name, entry in section.items():
        source = entry["source"]
        assert source["url"].startswith("https://") and source["format"] in FORMATS and entry["license"], name
        assert source.get("sha256") is None  # no publisher publishes one: never invent
        assert source.get("md5_prefix") == md5.get(name), name
        assert ("md5 prefix" in entry["verification"]) == (name in md5)
        assert "trust on first use" in entry["verification"]
        expected = pretrained_cfg_of(preset(entry["preprocessing"]))
        cfg = entry["pretrained_cfg"]
        assert {k: cfg[k] for k in ("interpolation", "crop_pct", "mean", "std")} == {
            k: list(v) if isinstance(v, tuple) else v for k, v in expected.items() if k in cfg and k != "input_size"
            and k != "crop_mode"}, name
    assert zoo.preprocessing("moco-imagenet-r50")["interpolation"] == "bilinear"
    assert zoo.preprocessing("simclrv1-imagenet-r50")["std"] == [1.0, 1.0, 1.0]
    assert zoo.info("mocov2-imagenet-r50-800ep")["name"] == "moco-imagenet-r50"


def test_study_base_offline_says_import_and_url(offline, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ZOO_HOME", str(tmp_path))
    started = time.perf_counter()
    with pytest.raises(NotCachedError) as raised:
        zoo.load("moco-imagenet-r50")
    assert time.perf_counter() - started < 2
    assert "zoo import moco-imagenet-r50 /path/to/moco_v2_800ep_pretrain.pth.tar" in str(raised.value)
    assert "https://dl.fbaipublicfiles.com/moco/moco_checkpoints/moco_v2_800ep/moco_v2_800ep_pretrain.pth.tar" in \
        str(raised.value)
    assert zoo_main(["download", "moco-imagenet-r50"]) == 2
    assert "zoo import moco-imagenet-r50" in capsys.readouterr().err
    assert zoo_main(["verify", "moco-imagenet-r50"]) == 0 and "not converted" in capsys.readouterr().out
