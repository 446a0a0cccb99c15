"""The name grammar's edges and its errors' exact wording (a user reads them to fix the name)."""
from __future__ import annotations

import pytest

from zoo.errors import UnknownNameError
from zoo.names import ModelName, canonical, parse_name


def test_too_short_a_name_shows_the_grammar_and_an_example():
    with pytest.raises(UnknownNameError) as caught:
        parse_name("hpt-r50")
    assert str(caught.value) == ("unknown model name 'hpt-r50' Expected '{strategy}-{domain}[-from-{source}]-{arch}"
                                 "[-{steps}]', e.g. 'hpt-chexpert-r50'; run `zoo list` to see published names.")
    assert caught.value.kind == "model name" and caught.value.name == "hpt-r50" and caught.value.suggestions == []


@pytest.mark.parametrize("text,message", [
    ("hbt-chexpert-r50", "unknown strategy 'hbt'; did you mean 'hpt'"),
    ("hpt-chexpert-r5o", "unknown architecture 'r5o'; did you mean 'r50'"),
    ("hpt-chexprt-r50", "unknown domain 'chexprt'; did you mean 'chexpert'"),
    ("hpt-chexpert-from-imagnet-r50", "unknown domain 'imagnet'; did you mean 'imagenet'"),
])
def test_each_part_is_named_in_the_error(text, message):
    with pytest.raises(UnknownNameError) as caught:
        parse_name(text)
    assert str(caught.value).startswith(message), str(caught.value)


def test_hyphenated_aliases_in_source_and_domain_and_str():
    name = parse_name("hpt-fashion-mnist-from-fashion-mnist-r18-2k")
    assert name == ModelName("hpt", "fashion_mnist", "r18", source="fashion_mnist", steps=2000)
    assert str(name) == "hpt-fashion_mnist-from-fashion_mnist-r18-2k"
    assert name.timm_arch == "resnet18" and ModelName("sup", "imagenet", "mnv2").timm_arch == "mobilenetv2_100"
    assert canonical("  Sup-ImageNet-MobileNetV2 ") == "sup-imagenet-mnv2"
    # a trailing number is a step count only when a domain is left before the arch
    assert parse_name("sup-imagenet-r50-300").steps == 300 and parse_name("sup-imagenet-r50").steps is None


def test_check_name_agrees_names_every_disagreement_and_a_fitting_name():
    from zoo.errors import NameMismatchError
    from zoo.names import check_name_agrees

    ok = check_name_agrees("hpt-chexpert-from-imagenet-r50-5k", strategy="hpt", domain="chexpert", arch="r50",
                           architecture="resnet50")
    assert ok == ModelName("hpt", "chexpert", "r50", source="imagenet", steps=5000)
    assert check_name_agrees("moco-kids-r18", strategy="moco", domain="chest_xray_kids", arch="r18").arch == "r18"
    assert check_name_agrees("moco-flowers-r18", strategy="moco", domain=None, arch="r18").domain == "flowers"
    with pytest.raises(NameMismatchError) as caught:
        check_name_agrees("moco-flowers-r18-2k", strategy="simclr", domain="chexpert", arch="r50", where="zoo.json")
    assert str(caught.value) == (
        "the name 'moco-flowers-r18-2k' disagrees with zoo.json: strategy 'moco' in the name, 'simclr' in zoo.json; "
        "domain 'flowers' in the name, 'chexpert' in zoo.json; arch 'r18' in the name, 'r50' in zoo.json. "
        "Use a name that matches, e.g. 'simclr-chexpert-r50-2k'")
    with pytest.raises(NameMismatchError) as caught:
        check_name_agrees("sup-imagenet-r18c", strategy="sup", domain=None, arch="r18c", architecture="resnet50")
    assert str(caught.value) == (
        "the name 'sup-imagenet-r18c' disagrees with the checkpoint: arch 'r18c' (resnet18) in the name, "
        "architecture 'resnet50' in config.json. Use a name that matches, e.g. 'sup-imagenet-r18c'")
    with pytest.raises(NameMismatchError, match="e.g. 'moco-flowers-from-imagenet-r18'"):
        check_name_agrees("hpt-flowers-from-imagenet-r18", strategy="moco", domain=None, arch="r18")
