"""Plain timm (`timm.create_model("hf-hub:<repo>", pretrained=True)`) against zoo.load, through olah."""
from __future__ import annotations

import json

import pytest
import timm
import torch

import zoo
from zoo.catalog import PACKAGED

X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))


def _hub_id(entry: dict) -> str:
    return f"hf-hub:{entry['repo_id']}@{entry['revision']}"


@pytest.mark.parametrize("name", sorted(json.loads(PACKAGED.read_text())["models"]))
def test_every_packaged_repo_loads_in_plain_timm_with_identical_outputs(olah, hub_cache, name):
    from huggingface_hub import hf_hub_download

    entry = json.loads(PACKAGED.read_text())["models"][name]
    plain = timm.create_model(_hub_id(entry), pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(plain(X), zoo.load(name, num_classes=None)(X))
        for variant in entry.get("bn_variants", []):  # what the card says to do for a BN variant
            zoo.apply_bn(plain, hf_hub_download(entry["repo_id"], f"bn/{variant}.safetensors",
                                                revision=entry["revision"]), entry["trunk_sha256"])
            assert torch.equal(plain(X), zoo.load(name, bn=variant, num_classes=None)(X))


def _resnet18_folder(target, model_args=None):
    """A ResNet-18 checkpoint as training exports one (weights from a seeded timm build)."""
    from zoo.build import create_model
    from zoo.checkpoint import timm_config, write_checkpoint

    torch.manual_seed(0)
    model = create_model("resnet18", 0, model_args)
    arch = "r18c" if model_args else "r18"
    cfg = {"input_size": (3, 32, 32), "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear",
           "crop_pct": 1.0}
    meta = {"name": f"moco-fashion_mnist-{arch}", "strategy": "moco", "method": "moco", "arch": arch,
            "domain": "fashion_mnist", "license": "Apache-2.0", "license_id": "apache-2.0",
            "lineage": [{"role": "target", "name": f"moco-fashion_mnist-{arch}", "domain": "fashion_mnist",
                         "method": "moco", "steps": 10}], "evaluations": []}
    return write_checkpoint(target, model.state_dict(), timm_config("resnet18", 0, 512, cfg, model_args), meta)


def test_resnet18_repo_loads_in_plain_timm_and_r18c_card_says_why_not(olah, mirror_root, hub_cache, tmp_path,
                                                                      monkeypatch):
    from zoo.publish import publish

    catalog = tmp_path / "catalog.json"
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    for arch, model_args in (("r18", None), ("r18c", {"zoo_stem": "cifar"})):
        folder = _resnet18_folder(tmp_path / arch, model_args)
        result = publish(folder, f"zoo-tests/moco-fashion_mnist-{arch}", mirror=mirror_root, catalog=catalog)
        entry = json.loads(catalog.read_text())["models"][result["name"]]
        if model_args is None:
            plain = timm.create_model(_hub_id(entry), pretrained=True).eval()
            with torch.no_grad():
                assert torch.equal(plain(X), zoo.load(result["name"])(X))
        else:  # a 3x3 stride-1 stem without max-pool is no timm option: loud refusal, and the card says so
            with pytest.raises(TypeError, match="zoo_stem"):
                timm.create_model(_hub_id(entry), pretrained=True)
            assert "Plain timm cannot build this network" in zoo.card(result["name"])
            assert zoo.load(result["name"])(X).shape == (2, 512)
