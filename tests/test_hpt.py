"""HPT strategies on the real ImageNet MobileNetV2 and the real animal silhouettes (tiny sizes)."""
from __future__ import annotations

import os

import pytest
import torch

import zoo
from zoo.bn import bn_keys

BASE = "sup-imagenet-mnv2"
TINY = {"steps": 3, "batch_size": 8, "queue_size": 64, "image_size": 32, "crop_pct": 1.0, "proj_hidden": 64,
        "bn_splits": 2, "progress": False, "checkpoint_every": 3, "device": "cpu", "num_workers": 0}


def test_hpt_starts_from_the_base(base_available):
    from training import config as configuration
    from training.engine import prepare

    config = configuration.resolve(None, {**TINY, "data": "animals", "init": BASE})
    setup = prepare(config)
    base = zoo.load(BASE)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    query = setup.method.backbone.eval()
    with torch.no_grad():
        assert torch.equal(query(x), base(x))
    query_state = setup.method.query.state_dict()
    for key, value in setup.method.key.state_dict().items():  # key encoder = a copy of the query encoder
        assert torch.equal(value, query_state[key]), key


def test_hpt_lineage_survives_export_load_info(base_available, tmp_path):
    from training import hpt

    out = hpt.run(hpt.recipe("hpt", "animals", "mnv2", base=BASE), tmp_path / "hpt", overrides=TINY)
    details = zoo.info(out)
    assert [(s["role"], s["name"]) for s in details["lineage"]][-2:] == [("base", BASE), ("target", "hpt-animals-mnv2")]
    assert details["lineage"][-2]["sha256"] == zoo.info(BASE)["files"]["model.safetensors"]["sha256"]
    assert details["strategy"] == "hpt" and details["steps"] == 3
    model = zoo.load(out)
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 1280)
    assert not torch.equal(model.conv_stem.weight, zoo.load(BASE).conv_stem.weight)  # it trained
    assert "hpt-animals-mnv2" in zoo.card(out)


def test_hptbn_changes_only_bn_and_is_an_overlay(base_available, tmp_path):
    from training import hpt

    out = hpt.run(hpt.recipe("hptbn", "animals", "mnv2", base=BASE), tmp_path / "hptbn", overrides=TINY)
    assert not (out / "model.safetensors").exists()  # an overlay on the base trunk, not a copy
    trained, base = zoo.load(out).state_dict(), zoo.load(BASE).state_dict()
    bn = set(bn_keys(zoo.load(BASE), affine=True))
    assert bn
    for key, value in trained.items():
        if key not in bn:
            assert torch.equal(value, base[key]), key
    assert any(not torch.equal(trained[k], base[k]) for k in bn if k.endswith(".weight"))  # affine trained
    assert zoo.info(out)["lineage"][-1]["name"] == "hptbn-animals-mnv2"


def test_base_strategy_is_an_overlay_of_recalibrated_statistics(base_available, tmp_path):
    from training import hpt

    out = hpt.run_base("animals", BASE, tmp_path / "base", image_size=32, crop_pct=1.0, max_images=64)
    model, base = zoo.load(out).state_dict(), zoo.load(BASE).state_dict()
    for key, value in model.items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        assert torch.equal(value, base[key]), key
    assert not torch.equal(model["bn1.running_mean"], base["bn1.running_mean"])
    assert [s["role"] for s in zoo.info(out)["lineage"]][-2:] == ["base", "target"]


def test_chain_records_each_hop(base_available, tmp_path):
    from training import hpt

    spec = hpt.recipe("hpt", "digits", "mnv2", base=BASE, source="animals")
    out = hpt.run(spec, tmp_path / "chain", overrides={**TINY, "steps": 2, "checkpoint_every": 2})
    lineage = zoo.info(out)["lineage"]
    assert [(s["role"], s["domain"]) for s in lineage][-3:] == [("base", "imagenet"), ("source", "animals"),
                                                                ("target", "digits")]
    assert zoo.info(out)["name"] == "hpt-digits-from-animals-mnv2"


def test_domains_resolve_and_missing_data_says_where(tmp_path, monkeypatch):
    from training import hpt
    from training.offline_sets import DataNotFoundError
    from zoo.domains import DOMAINS

    monkeypatch.setenv("ZOO_DATA", str(tmp_path))
    for name in DOMAINS:
        if name in ("fashion_mnist", "animals", "digits"):
            assert hpt.data_spec(name) == name
            continue
        with pytest.raises(DataNotFoundError) as error:
            hpt.data_spec(name)
        assert str(tmp_path / name) in str(error.value) and DOMAINS[name].obtain.split(" ")[0] in str(error.value)
    (tmp_path / "chexpert" / "train").mkdir(parents=True)
    (tmp_path / "chexpert" / "train" / "x.png").write_bytes(b"")
    assert hpt.data_spec("chexpert") == str(tmp_path / "chexpert")


def test_recipe_matrix_covers_the_study(tmp_path):
    import yaml

    from training import hpt

    paths = hpt.write_matrix(tmp_path)
    assert len(paths) == 16 * 4 + 3
    names = {p.stem for p in paths}
    assert {"hpt-chexpert-r50", "hptbn-chexpert-r50", "base-chexpert-r50", "target-chexpert-r50",
            "hpt-chest_xray_kids-from-chexpert-r50", "hpt-ucmerced-from-resisc-r50",
            "hpt-domain_net_sketch-from-domain_net_clipart-r50"} <= names
    spec = yaml.safe_load((tmp_path / "hptbn-chexpert-r50.yaml").read_text())
    assert spec["training"]["trainable"] == "bn" and spec["training"]["steps"] == 5000
    assert spec["training"]["queue_size"] == 65536 and spec["base"] == "moco-imagenet-r50"
    for path in paths:  # every recipe name is a valid zoo name
        assert zoo.canonical(path.stem) == path.stem


def test_cli_missing_data_exits_2_and_writes_nothing(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "training", "hpt", "--strategy", "hpt", "--target", "chexpert",
                             "--arch", "mnv2", "--base", BASE, "--out", str(tmp_path / "out")],
                            env={**os.environ, "ZOO_DATA": str(tmp_path / "data")}, capture_output=True, text=True)
    assert result.returncode == 2
    assert "no data for domain 'chexpert'" in result.stderr and "stanfordmlgroup" in result.stderr
    assert not (tmp_path / "out").exists()
