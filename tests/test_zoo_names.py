"""The name grammar round-trips over every strategy/domain/arch and rejects typos with suggestions."""
from __future__ import annotations

import itertools

import pytest

from zoo.domains import DOMAINS, HPT_CHAINS, HPT_TARGETS, get_domain
from zoo.errors import UnknownNameError
from zoo.names import ARCHS, STRATEGIES, ModelName, canonical, format_name, parse_name


@pytest.mark.parametrize("strategy,domain,arch", list(itertools.product(STRATEGIES, DOMAINS, ARCHS)))
def test_parse_format_round_trip(strategy, domain, arch):
    for steps in (None, 50, 500, 5000, 200000):
        name = ModelName(strategy, domain, arch, steps=steps)
        assert parse_name(format_name(name)) == name


@pytest.mark.parametrize("source,target", HPT_CHAINS)
def test_chains_round_trip(source, target):
    name = ModelName("hpt", target, "r50", source=source, steps=5000)
    text = format_name(name)
    assert text == f"hpt-{target}-from-{source}-r50-5k"
    assert parse_name(text) == name


def test_aliases_and_examples():
    assert canonical("hpt-kids-from-chexpert-resnet50") == "hpt-chest_xray_kids-from-chexpert-r50"
    assert canonical("MoCoV2-ImageNet-R50") == "moco-imagenet-r50"
    assert canonical("target-chexpert-r50-200k") == "target-chexpert-r50-200k"
    assert canonical("base-fashion-mnist-mnv2") == "base-fashion_mnist-mnv2"
    assert parse_name("target-chexpert-r50-200k").steps == 200_000
    assert canonical("hptbn-clipart-r50") == "hptbn-domain_net_clipart-r50"


@pytest.mark.parametrize("text,part,suggestion", [
    ("hpt-chexpret-r50", "domain", "chexpert"),
    ("hpt-chexpert-r5O", "architecture", "r50"),
    ("hbt-chexpert-r50", "strategy", "hpt"),
    ("mocco-imagenet-r50", "strategy", "moco"),
])
def test_typos_name_the_part_and_suggest(text, part, suggestion):
    with pytest.raises(UnknownNameError) as error:
        parse_name(text)
    assert part in str(error.value) and suggestion in error.value.suggestions


def test_every_domain_resolves_with_its_facts():
    assert len(HPT_TARGETS) == 16 and set(HPT_TARGETS) <= set(DOMAINS)
    for name in DOMAINS:
        domain = get_domain(name)
        assert domain.task in ("single-label", "multi-label")
        assert len(domain.mean) == len(domain.std) == domain.channels
        assert domain.terms and domain.obtain
    assert get_domain("chexpert").channels == 1 and get_domain("chexpert").metric == "mean_auroc"
    assert get_domain("kids").name == "chest_xray_kids"


def test_model_cards_are_the_published_generated_cards():
    """model_cards/ holds exactly the cards publishing generated (hash-pinned in the catalog)."""
    from pathlib import Path

    from zoo.catalog import catalog
    from zoo.integrity import sha256_file

    cards = Path(__file__).resolve().parents[1] / "model_cards"
    published = catalog()["models"]
    assert published
    for name, entry in published.items():
        assert sha256_file(cards / f"{name}.md") == entry["files"]["README.md"]["sha256"], name
