"""Model cards: Hub metadata generated from zoo.json, parsed by huggingface_hub.ModelCard, model_cards/ in sync."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from zoo.cards import HUB_DATASETS, card_metadata, render_card, variant_name
from zoo.catalog import PACKAGED

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"


def _packaged() -> dict:
    return json.loads(PACKAGED.read_text())


def _published_cards() -> dict[str, tuple[dict, str]]:
    """Every name the packaged catalog publishes -> (its entry, the repo file that is its card)."""
    cards = {}
    for name, entry in _packaged()["models"].items():
        cards[name] = (entry, "README.md")
        if "trunk" not in entry:
            for variant in entry.get("bn_variants", []):
                cards[variant_name(entry, variant)] = (entry, f"bn/{variant}.md")
    return cards


def test_model_cards_folder_is_the_catalog_s_cards_exactly():
    published = _published_cards()
    assert sorted(p.stem for p in CARDS.glob("*.md")) == sorted(published)
    for name, (entry, card_file) in published.items():
        text = (CARDS / f"{name}.md").read_bytes()
        assert hashlib.sha256(text).hexdigest() == entry["files"][card_file]["sha256"], (
            f"model_cards/{name}.md differs from the card pinned in the catalog; regenerate with "
            f"`python -m training.demo --republish` (or `zoo publish ... --cards model_cards`)")


@pytest.mark.parametrize("name", sorted(_published_cards()))
def test_every_card_parses_and_matches_the_catalog(name):
    entry, card_file = _published_cards()[name]
    card = ModelCard((CARDS / f"{name}.md").read_text())
    data = card.data.to_dict()
    variant = card_file.startswith("bn/")
    assert data["library_name"] == ("hpt-zoo" if "trunk" in entry else "timm")
    assert data["pipeline_tag"] == ("image-classification" if entry["num_classes"] else "image-feature-extraction")
    license_id = entry.get("license_id", "")
    assert data["license"] == license_id or (data["license"] == "other" and data["license_name"])
    methods = {entry.get("method")} | {s.get("method") for s in entry.get("lineage", [])}
    if variant:
        methods.add("bn-recalibration")
    assert ("self-supervised" in data["tags"]) == bool(methods & {"moco", "simclr", "pic"})
    assert ("supervised" in data["tags"]) == ("supervised" in methods)
    domains = {s.get("domain") for s in entry.get("lineage", [])} | {entry.get("domain")}
    assert set(data.get("datasets", [])) == {HUB_DATASETS[d] for d in domains if d in HUB_DATASETS}
    assert all("/" in d for d in data.get("datasets", []))  # Hub ids, not domain keys
    evaluations = [] if variant else entry.get("evaluations", [])
    assert len(card.data.eval_results or []) == len(evaluations)
    assert f"# {name}" in card.text
    for filename, record in entry["files"].items():
        if filename.endswith(".safetensors") and not variant:
            assert record["sha256"] in card.text


def test_metadata_from_lineage_evaluations_and_method():
    meta = {"name": "hpt-animals-mnv2", "strategy": "hpt", "method": "moco", "license_id": "apache-2.0",
            "domain": "animals",
            "lineage": [{"role": "base", "name": "sup-imagenet-mnv2", "domain": "imagenet", "method": "supervised"},
                        {"role": "target", "name": "hpt-animals-mnv2", "domain": "animals", "method": "moco"}],
            "evaluations": [{"protocol": "linear", "data": "animals", "split": "test", "metric": "top1", "value": 0.9},
                            {"protocol": "knn", "data": "fashion_mnist", "split": "test", "metric": "top1",
                             "value": 0.7}],
            "weights": {}}
    config = {"architecture": "mobilenetv2_100", "num_classes": 0, "pretrained_cfg": {}}
    from zoo.publish import _lineage_with_repos

    meta["lineage"] = _lineage_with_repos(meta["lineage"])  # what publish does: published hops get their repo
    assert [step.get("repo_id") for step in meta["lineage"]] == ["hpt-zoo/sup-imagenet-mnv2", None]
    card = ModelCard(render_card(meta, config, "lab/hpt-animals-mnv2"))
    data = card.data.to_dict()
    assert data["base_model"] == "hpt-zoo/sup-imagenet-mnv2" and data["base_model_relation"] == "finetune"
    assert data["pipeline_tag"] == "image-feature-extraction" and data["license"] == "apache-2.0"
    assert {"self-supervised", "moco-v2", "hierarchical-pretraining"} <= set(data["tags"])
    assert data["datasets"] == ["ILSVRC/imagenet-1k"]  # training data; evaluation data goes to model-index
    results = [(r.dataset_type, r.metric_type, r.metric_value) for r in card.data.eval_results]
    assert results == [("animals", "accuracy", 0.9), ("zalando-datasets/fashion_mnist", "accuracy", 0.7)]
    assert 'timm.create_model("hf-hub:lab/hpt-animals-mnv2", pretrained=True)' in card.text
    assert card_metadata(meta, config) == {k: v for k, v in data.items()}


def test_r18c_card_says_plain_timm_cannot_build_it():
    meta = {"name": "moco-fashion_mnist-r18c", "method": "moco", "strategy": "moco", "weights": {}}
    config = {"architecture": "resnet18", "num_classes": 0, "model_args": {"zoo_stem": "cifar"}}
    text = render_card(meta, config, "lab/r18c")
    assert "Plain timm cannot build this network" in text and "hf-hub:lab/r18c" not in text
