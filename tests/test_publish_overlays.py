"""Base-BN and HPT-BN outputs (BN overlays on a published trunk) publish and load by name, with their own card
and the preprocessing their statistics were computed at."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from zoo.errors import ZooError

TRUNK = "sup-imagenet-mnv2"


@pytest.fixture(scope="module")
def base_bn_folder(tmp_path_factory) -> Path:
    """The Base strategy for real: the trunk's BN statistics re-estimated on animal silhouettes at 64 px."""
    from training import hpt

    return hpt.run_base("animals", TRUNK, tmp_path_factory.mktemp("base") / "base-animals-mnv2", image_size=64,
                        crop_pct=1.0, max_images=256, batch_size=128)


def _hptbn_folder(target: Path) -> Path:
    """An HPT-BN overlay (BN statistics + affine parameters) on the published trunk, as training writes one."""
    from zoo.bn import extract_bn, recalibrate_bn
    from zoo.checkpoint import write_overlay_checkpoint
    from zoo.loader import trunk_sha256

    model = zoo.load(TRUNK)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):  # "trained" BN affine parameters
                module.weight.mul_(1 + 0.05 * torch.randn(module.weight.shape, generator=generator))
                module.bias.add_(0.05 * torch.randn(module.bias.shape, generator=generator))
    recalibrate_bn(model, [torch.rand(16, 3, 64, 64, generator=generator) for _ in range(2)])
    sha = trunk_sha256(zoo.info(TRUNK))
    overlay = target.parent / "hptbn-overlay.safetensors"
    extract_bn(model, overlay, trunk_sha256=sha, domain="animals", affine=True)
    meta = {"name": "hptbn-animals-mnv2", "strategy": "hptbn", "method": "moco", "arch": "mnv2", "domain": "animals",
            "steps": 100, "license": "Apache-2.0", "license_id": "apache-2.0", "timm_arch": "mobilenetv2_100",
            "hyperparameters": {"image_size": 64, "crop_pct": 1.0, "steps": 100},  # as an HPT-BN export records
            "lineage": [{"role": "base", "name": TRUNK, "domain": "imagenet", "method": "supervised", "steps": None,
                         "sha256": sha},
                        {"role": "target", "name": "hptbn-animals-mnv2", "domain": "animals", "method": "moco",
                         "steps": 100, "sha256": None}],
            "evaluations": [{"protocol": "linear", "data": "animals", "split": "test", "metric": "top1",
                             "value": 0.8125}],
            "summary": "HPT-BN on animals: only BatchNorm parameters trained."}
    return write_overlay_checkpoint(target, overlay, "animals", {"name": TRUNK, "sha256": sha}, meta)


def test_base_bn_and_hptbn_overlays_publish_and_load_by_name(olah, mirror_root, hub_cache, base_bn_folder, tmp_path,
                                                            monkeypatch):
    from huggingface_hub import ModelCard

    from zoo.publish import publish

    hptbn_folder = _hptbn_folder(tmp_path / "hptbn-animals-mnv2")
    catalog = tmp_path / "catalog.json"
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    trunk_out = zoo.load(TRUNK)(x)
    for name, folder, input_size in (("base-animals-mnv2", base_bn_folder, [3, 64, 64]),
                                     ("hptbn-animals-mnv2", hptbn_folder, [3, 64, 64])):
        result = publish(folder, f"zoo-tests/{name}", mirror=mirror_root, catalog=catalog)
        assert result["kind"] == "overlay" and result["name"] == name
        entry = json.loads(catalog.read_text())["models"][name]
        assert entry["trunk"] == TRUNK and "model.safetensors" not in entry["files"]  # no copy of the trunk
        by_name, by_folder = zoo.load(name), zoo.load(folder)
        assert torch.equal(by_name(x), by_folder(x))
        assert not torch.equal(by_name(x), trunk_out)
        assert zoo.info(name)["pretrained_cfg"]["input_size"] == input_size  # what the statistics were computed at
        assert list(zoo.transforms(name).transforms[3].size) == input_size[1:]  # the crop at that size
        # the card's recipe for timm users: the trunk from the Hub + this repo's BN file
        import timm
        from huggingface_hub import hf_hub_download

        trunk = zoo.info(TRUNK)
        plain = timm.create_model(f"hf-hub:{trunk['repo_id']}@{trunk['revision']}", pretrained=True).eval()
        zoo.apply_bn(plain, hf_hub_download(entry["repo_id"], "bn/animals.safetensors", revision=entry["revision"]),
                     entry["trunk_sha256"])
        with torch.no_grad():
            assert torch.equal(plain(x), zoo.load(name, num_classes=None)(x))
        card = ModelCard(zoo.card(name))
        assert card.data.base_model == "hpt-zoo/sup-imagenet-mnv2"
        assert card.data.to_dict()["base_model_relation"] == "adapter"
        assert f"# {name}" in card.text and "timm cannot load it on its own" in card.text
    eval_results = ModelCard(zoo.card("hptbn-animals-mnv2")).data.eval_results
    assert [(r.metric_type, r.metric_value) for r in eval_results] == [("accuracy", 0.8125)]
    # the packaged BN variant of the trunk has its own card too
    monkeypatch.delenv("ZOO_CATALOG")
    variant_card = zoo.card("base-animals-mnv2")
    assert variant_card.startswith("---") and "# base-animals-mnv2" in variant_card
    assert "# sup-imagenet-mnv2" in zoo.card(TRUNK)
    assert zoo.info("base-animals-mnv2")["pretrained_cfg"]["input_size"] == [3, 96, 96]


def test_an_overlay_on_an_unpublished_trunk_is_refused(base_bn_folder, tmp_path):
    from zoo.publish import publish

    folder = tmp_path / "orphan"
    import shutil

    shutil.copytree(base_bn_folder, folder)
    meta = json.loads((folder / "zoo.json").read_text())
    meta["trunk"]["name"] = "exported/my-local-trunk"
    (folder / "zoo.json").write_text(json.dumps(meta))
    with pytest.raises(ZooError, match="Publish the trunk first"):
        publish(folder, "lab/orphan", mirror=tmp_path / "mirror")
    assert not (tmp_path / "mirror" / "models").exists()
