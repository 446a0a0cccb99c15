"""Every HPT target from a miniature replica of its official download: prepare -> 2 HPT steps with the study's
recipe (base overridden to the small real MobileNetV2) -> every evaluation protocol with the registry's metric."""
from __future__ import annotations

import json
import warnings

import pytest

import zoo
from tests import domain_layouts
from zoo.domains import DOMAINS, HPT_TARGETS

BASE = "sup-imagenet-mnv2"
TINY = ["--steps", "2", "--batch-size", "4", "--image-size", "32", "--queue-size", "8", "--device", "cpu",
        "--set", "proj_hidden=32", "--set", "checkpoint_every=2", "--set", "progress=false", "--set", "crop_pct=1.0"]
EVAL = {"knn": [], "linear": ["--iterations", "4", "--lrs", "0.3"],
        "semi": ["--iterations", "2", "--lrs", "0.01", "--batch-size", "4", "--labels", "8"],
        "finetune": ["--iterations", "2", "--lrs", "0.01", "--batch-size", "4"]}


@pytest.mark.parametrize("domain", HPT_TARGETS)
def test_official_layout_prepares_trains_and_evaluates(domain, base_available, tmp_path, capsys):
    from training.cli import main
    from training.prepare import PartialDownloadWarning, prepare, read_manifest

    info = DOMAINS[domain]
    download = domain_layouts.build(domain, tmp_path / "download")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prepared = prepare(domain, download, tmp_path / "prepared", **domain_layouts.OPTIONS.get(domain, {}))
    manifest = read_manifest(prepared)
    assert manifest["domain"] == domain and manifest["num_classes"] == info.num_classes
    assert manifest["task"] == info.task and len(manifest["label_names"]) == info.num_classes
    assert all(manifest["splits"][s]["images"] > 0 for s in ("train", "val", "test"))
    assert manifest["preparer_version"] and len(manifest["splits"]["train"]["sha256"]) == 64
    if "all" in str(manifest["expected"]) or manifest["expected"]:  # a replica is smaller than the release
        assert any(issubclass(w.category, PartialDownloadWarning) and "expected" in str(w.message) for w in caught)
    assert len(manifest["measured_stats"]["mean"]) == (1 if info.channels == 1 else 3)

    out = tmp_path / "hpt"
    code = main(["hpt", "--recipe", f"recipes/hpt/hpt-{domain}-r50.yaml", "--base", BASE, "--arch", "mnv2",
                 "--data", f"{domain}={prepared}", "--out", str(out), *TINY])
    assert code == 0, capsys.readouterr().err
    trained = zoo.info(out)
    assert trained["domain"] == domain and trained["steps"] == 2
    assert trained["lineage"][-2]["name"] == BASE
    assert trained["data"]["prepared_sha256"] == manifest["splits"]["train"]["sha256"]  # what it trained on

    for protocol, options in EVAL.items():
        record_file = tmp_path / f"{protocol}.json"
        code = main(["evaluate", str(out), "--protocol", protocol, "--data", str(prepared), "--out", str(record_file),
                     *options])
        assert code == 0, capsys.readouterr().err
        record = json.loads(record_file.read_text())
        assert record["metric"] == info.metric, (protocol, record)
        assert record["data"] == domain
        value = record["value"]
        assert 0.0 <= value <= 1.0, (protocol, record)
        if info.task == "multi-label":  # the study's one-class rule is applied and reported
            assert "one_class_labels" in record and "mean_auroc_defined_labels" in record


def test_registry_and_prepared_data_must_agree(tmp_path):
    from training.data import open_source
    from training.prepare import prepare

    download = domain_layouts.build("chest_xray_kids", tmp_path / "download")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare("chest_xray_kids", download, tmp_path / "prepared")
    with pytest.raises(ValueError, match="holds prepared 'chest_xray_kids' data, not 'chexpert'"):
        open_source(str(prepared), "train", "chexpert")
    manifest = json.loads((prepared / "manifest.json").read_text())
    manifest["num_classes"] = 3
    (prepared / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="registry .* says 2 single-label"):
        open_source(str(prepared), "train")


def test_registry_statistics_are_the_studys_and_match_the_conversion_presets():
    from zoo.presets import HPT_NORMALIZATION

    for name in HPT_TARGETS:
        info = DOMAINS[name]
        mean, std = HPT_NORMALIZATION[name]
        widen = (lambda v: tuple(v) * 3 if len(v) == 1 else tuple(v))
        assert widen(info.mean) == mean and widen(info.std) == std, name
        assert info.stats_measured and "study" in info.stats_source
