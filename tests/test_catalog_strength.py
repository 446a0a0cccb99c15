"""zoo.catalog on catalogs written for the test (merged through $ZOO_CATALOG): lookup, step choices,
BN variants, pattern listing and the errors' exact advice. No network."""
from __future__ import annotations

import json
import os

import pytest

from zoo import catalog as cat
from zoo.errors import NotPublishedError, UnknownNameError, UnknownVariantError


def _entry(**extra):
    return {"repo_id": "org/repo", "revision": "c" * 40, "timm_arch": "resnet50", "num_classes": 0,
            "files": {"model.safetensors": {"sha256": "0" * 64, "size": 3}}, **extra}


@pytest.fixture
def extra_catalogs(tmp_path, monkeypatch):
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"models": {
        "target-chexpert-r50-5k": _entry(),
        "target-chexpert-r50-50k": _entry(recommended=True),
        "moco-flowers-r18-100": _entry(),
        "moco-flowers-r18-2k": _entry(),
        "sup-imagenet-r50": _entry(bn_variants=["chexpert", "flowers"]),
        "hpt-chexpert-r50": _entry(repo_id="org/first")}, "bases": {"r50": "sup-imagenet-r50"}}))
    second = tmp_path / "second.json"  # later files win
    second.write_text(json.dumps({"models": {"hpt-chexpert-r50": _entry(repo_id="org/second")}}))
    monkeypatch.setenv("ZOO_CATALOG", os.pathsep.join([str(first), "", str(tmp_path / "absent.json"), str(second)]))
    return first, second


def test_catalog_paths_split_on_the_path_separator(extra_catalogs, monkeypatch):
    first, second = extra_catalogs
    assert cat.catalog_paths()[0] == cat.PACKAGED
    assert cat.catalog_paths()[-3:] == [first, first.with_name("absent.json"), second]  # in order, empty parts dropped
    monkeypatch.delenv("ZOO_CATALOG")
    assert cat.PACKAGED in cat.catalog_paths() and first not in cat.catalog_paths()


def test_catalogs_merge_in_order_and_reload_when_a_file_changes(extra_catalogs):
    first, second = extra_catalogs
    data = cat.catalog()
    assert data["models"]["hpt-chexpert-r50"]["repo_id"] == "org/second"
    assert data["bases"] == {"mnv2": "sup-imagenet-mnv2", "r50": "sup-imagenet-r50"}
    assert "sup-imagenet-mnv2" in data["models"]  # the packaged catalog is kept
    second.write_text(json.dumps({"models": {"new-imagenet-r18": _entry()}}))
    os.utime(second, ns=(10**18, 10**18))
    reloaded = cat.catalog()
    assert "new-imagenet-r18" in reloaded["models"] and reloaded["models"]["hpt-chexpert-r50"]["repo_id"] == "org/first"


def test_published_names_include_base_variants_and_patterns_filter(extra_catalogs):
    names = cat.published_names()
    assert names == sorted(names)
    assert {"base-chexpert-r50", "base-flowers-r50", "base-animals-mnv2", "sup-imagenet-r50"} <= set(names)
    assert cat.list_models("chexpert") == ["base-chexpert-r50", "hpt-chexpert-r50", "target-chexpert-r50-50k",
                                           "target-chexpert-r50-5k"]
    assert cat.list_models("target-*") == ["target-chexpert-r50-50k", "target-chexpert-r50-5k"]
    assert cat.list_models("moco-flowers-r18-?k") == ["moco-flowers-r18-2k"]
    assert cat.list_models("[bh]*-chexpert-r50") == ["base-chexpert-r50", "hpt-chexpert-r50"]
    assert cat.list_models() == names and cat.list_models("") == names


def test_entry_fields():
    entry = cat.Entry("x", {"repo_id": "o/r", "files": {"a": {"size": 1}}})
    assert entry.repo_id == "o/r" and entry.file("a") == {"size": 1} and entry.bn_variants == []
    with pytest.raises(AttributeError, match="revision"):
        entry.revision
    assert cat.Entry("y", {"bn_variants": ["a", "b"]}).bn_variants == ["a", "b"]


def test_resolve_exact_canonical_recommended_and_base_variant(extra_catalogs):
    entry, variant = cat.resolve("hpt-chexpert-r50")
    assert (entry.name, entry.repo_id, variant) == ("hpt-chexpert-r50", "org/second", None)
    assert cat.resolve("HPT-CheXpert-ResNet50")[0].name == "hpt-chexpert-r50"  # canonical spelling
    assert cat.resolve("target-chexpert-r50")[0].name == "target-chexpert-r50-50k"  # the recommended one
    assert cat.resolve("target-chexpert-r50-5000")[0].name == "target-chexpert-r50-5k"
    trunk, variant = cat.resolve("base-flowers-r50")
    assert (trunk.name, variant) == ("sup-imagenet-r50", "flowers")


def test_resolve_asks_to_pick_among_step_counts_without_a_recommendation(extra_catalogs):
    with pytest.raises(UnknownNameError) as caught:
        cat.resolve("moco-flowers-r18")
    assert "Several step counts are published: moco-flowers-r18-100, moco-flowers-r18-2k; pick one." \
        in str(caught.value)


def test_unpublished_recipes_say_how_to_make_them(extra_catalogs):
    with pytest.raises(NotPublishedError) as caught:
        cat.resolve("base-sketch-r50")
    message = str(caught.value)
    assert message.startswith("'base-domain_net_sketch-r50' is a valid recipe name but no checkpoint is published")
    assert ("python -m training hpt --strategy base --target domain_net_sketch --arch r50 "
            "--out exported/base-domain_net_sketch-r50 (needs the domain_net_sketch data") in message
    with pytest.raises(NotPublishedError, match="Published names close to it: hpt-chexpert-r50") as caught:
        cat.resolve("hpt-chexpert-r18")
    with pytest.raises(UnknownNameError, match="Run `zoo list` to see published names") as caught:
        cat.resolve("hpt-chexprt-r50")
    assert "chexpert" in str(caught.value)


def test_recipe_hints_per_strategy():
    from zoo.names import parse_name

    assert cat.recipe_hint(parse_name("hpt-chexpert-from-imagenet-r50-5k")) == (
        "Produce it with: python -m training hpt --strategy hpt --target chexpert --arch r50 --source imagenet "
        "--steps 5000 --out exported/hpt-chexpert-from-imagenet-r50-5k (needs the chexpert data and the base "
        "model), then `zoo publish` the folder.")
    assert cat.recipe_hint(parse_name("moco-imagenet-r50-200")) == (
        "If you have the MoCo v2 authors' file: zoo convert moco_v2_800ep_pretrain.pth.tar "
        "exported/moco-imagenet-r50-200 --arch r50 --name moco-imagenet-r50-200, then pass that folder as --base. "
        "Or produce it with: python -m training pretrain --method moco --data imagenet --arch r50 --steps 200 "
        "--run runs/moco-imagenet-r50-200.")
    assert cat.recipe_hint(parse_name("simclr-flowers-r18")) == (
        "Produce it with: python -m training pretrain --method simclr --data flowers --arch r18 "
        "--run runs/simclr-flowers-r18, export it with python -m training export, then `zoo publish` the folder.")
    assert "--method moco --data flowers" in cat.recipe_hint(parse_name("moco-flowers-r18"))


def test_check_variant_accepts_aliases_and_suggests(extra_catalogs):
    entry, _ = cat.resolve("sup-imagenet-r50")
    assert cat.check_variant(entry, "flowers") == "flowers"
    assert cat.check_variant(entry, "CheXpert") == "chexpert"
    with pytest.raises(UnknownVariantError) as caught:
        cat.check_variant(entry, "flower")
    assert str(caught.value) == ("sup-imagenet-r50 has no BN variant 'flower'; available: chexpert, flowers. "
                                 "Did you mean flowers? Make a new one with zoo.recalibrate_bn + zoo.extract_bn.")
    bare, _ = cat.resolve("hpt-chexpert-r50")
    with pytest.raises(UnknownVariantError, match="available: none. Make a new one"):
        cat.check_variant(bare, "zzzz")
