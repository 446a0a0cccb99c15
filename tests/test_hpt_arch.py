"""Issue 16: the arch a recipe asks for is the arch that trains, and a checkpoint's name agrees with its contents.

Every strategy (base, target, hpt, hptbn, chain) x every arch (r18, r18c, r50, mnv2) runs for one step on
the real offline silhouettes at 32 px. The bases are this module's own Target exports (one per arch), so the
check does not depend on which archs happen to be published.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import zoo
from training import hpt
from training.config import ConfigError
from zoo.errors import NameMismatchError
from zoo.names import ARCHS, parse_name

ROOT = Path(__file__).resolve().parents[1]
ARCH_LIST = ("r18", "r18c", "r50", "mnv2")
TINY = {"steps": 1, "batch_size": 8, "queue_size": 16, "image_size": 32, "crop_pct": 1.0, "proj_hidden": 32,
        "proj_dim": 16, "bn_splits": 1, "progress": False, "checkpoint_every": 1, "device": "cpu",
        "num_workers": 0, "knn_every": 0, "bn_images": 64}
TARGET, SOURCE = "animals", "digits"


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """arch -> a Target export of that arch (trained here), used as the base of the other strategies."""
    root = tmp_path_factory.mktemp("arch-bases")
    made = {}

    def base_for(arch: str) -> Path:
        if arch not in made:
            made[arch] = hpt.run(hpt.recipe("target", TARGET, arch), root / f"target-{arch}", overrides=TINY)
        return made[arch]
    return base_for


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / name).read_text())


def _assert_agrees(out: Path, strategy: str, arch: str, source: str | None = None):
    meta = _read(out, "zoo.json")
    expected = hpt.name_of(strategy, TARGET, arch, source)
    assert meta["name"] == expected
    assert meta["strategy"] == strategy and meta["arch"] == arch and meta["domain"] == TARGET
    assert parse_name(meta["name"]).arch == arch
    details = zoo.info(out)
    if (out / "config.json").exists():  # a full checkpoint: config.json builds the asked-for network
        config = _read(out, "config.json")
        assert config["architecture"] == ARCHS[arch]
        assert (config.get("model_args") or {}).get("zoo_stem") == ("cifar" if arch == "r18c" else None)
    else:  # an overlay: its trunk is the base of the same arch
        assert meta["timm_arch"] == ARCHS[arch] and details["arch"] == arch
    model = zoo.load(out)
    first_conv = next(m for m in model.modules() if m.__class__.__name__ == "Conv2d")
    # r18c's 3x3 stem vs r18's 7x7, mnv2's 3x3 stride-2 stem: the built network is the named one
    assert first_conv.kernel_size == {"r18": (7, 7), "r50": (7, 7), "r18c": (3, 3), "mnv2": (3, 3)}[arch]
    assert model.num_features == {"r18": 512, "r18c": 512, "r50": 2048, "mnv2": 1280}[arch]


@pytest.mark.parametrize("arch", ARCH_LIST)
def test_target_builds_the_recipes_arch(bases, arch):
    _assert_agrees(bases(arch), "target", arch)


@pytest.mark.parametrize("arch", ARCH_LIST)
@pytest.mark.parametrize("strategy", ("base", "hpt", "hptbn", "chain"))
def test_every_strategy_exports_the_asked_arch(bases, tmp_path, strategy, arch):
    base = str(bases(arch))
    if strategy == "chain":
        spec = hpt.recipe("hpt", TARGET, arch, source=SOURCE, base=base)
        out = hpt.run(spec, tmp_path / "out", overrides=TINY)
        _assert_agrees(out, "hpt", arch, source=SOURCE)
        lineage = zoo.info(out)["lineage"]
        assert [(hop["domain"], hop["name"]) for hop in lineage[-3:]] == [
            (TARGET, hpt.name_of("target", TARGET, arch)), (SOURCE, hpt.name_of("hpt", SOURCE, arch, steps=1)),
            (TARGET, hpt.name_of("hpt", TARGET, arch, SOURCE))]
        assert [hop["role"] for hop in lineage[-2:]] == ["source", "target"]
        return
    out = hpt.run(hpt.recipe(strategy, TARGET, arch, base=base), tmp_path / "out", overrides=TINY)
    _assert_agrees(out, strategy, arch)


def test_a_base_of_another_arch_is_refused_before_any_work(bases, tmp_path):
    base = str(bases("r18"))
    for strategy in ("base", "hpt", "hptbn"):
        with pytest.raises(ConfigError, match=r"arch 'mnv2' was asked for, but the base .* is a 'r18'"):
            hpt.run(hpt.recipe(strategy, TARGET, "mnv2", base=base), tmp_path / strategy, overrides=TINY)
        assert not (tmp_path / strategy).exists() and not (tmp_path / f".{strategy}.runs").exists()


def test_export_refuses_a_name_that_disagrees(bases, tmp_path):
    from training.export import export

    run_dir = bases("r18").parent / ".target-r18.runs" / f"run-{TARGET}"
    for wrong, part in (("target-animals-r50", "arch 'r50' in the name, 'r18'"),
                        ("hpt-animals-r18", "strategy 'hpt' in the name, 'moco'"),
                        ("target-digits-r18", "domain 'digits' in the name, 'animals'")):
        with pytest.raises(NameMismatchError, match=part):
            export(run_dir, tmp_path / wrong, name=wrong)
        assert not (tmp_path / wrong).exists()
    assert _read(export(run_dir, tmp_path / "ok", name="target-animals-r18"), "zoo.json")["strategy"] == "target"


def test_the_issue_command_line_trains_mnv2(tmp_path):
    """The exact reproduction from the issue: `--strategy target --arch mnv2` used to train a ResNet-18."""
    result = subprocess.run(
        [sys.executable, "-m", "training", "hpt", "--strategy", "target", "--target", "animals", "--arch", "mnv2",
         "--steps", "1", "--image-size", "32", "--batch-size", "8", "--queue-size", "64", "--out", str(tmp_path / "t")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _read(tmp_path / "t", "config.json")["architecture"] == "mobilenetv2_100"
    assert _read(tmp_path / "t", "zoo.json")["arch"] == "mnv2"


def test_recipe_arch_override_renames_and_mismatch_is_exit_2(bases, tmp_path):
    recipe = ROOT / "recipes" / "hpt" / "hpt-chexpert-r50.yaml"
    spec = hpt.with_overrides(yaml.safe_load(recipe.read_text()), arch="mnv2", base="sup-imagenet-mnv2")
    assert spec["name"] == "hpt-chexpert-mnv2" and hpt.planned_arch(spec) == "mnv2"
    result = subprocess.run(
        [sys.executable, "-m", "training", "hpt", "--recipe", str(recipe), "--base", str(bases("r18")),
         "--out", str(tmp_path / "x")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "arch 'r50' was asked for" in result.stderr, result.stderr
    assert not (tmp_path / "x").exists()


RECIPES = sorted((ROOT / "recipes" / "hpt").glob("*.yaml"))


def test_the_studys_67_recipes_are_all_there():
    assert len(RECIPES) == 67


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_each_recipe_builds_its_declared_arch(path):
    spec = yaml.safe_load(path.read_text())
    assert spec["name"] == path.stem
    assert parse_name(spec["name"]).arch == spec["arch"]
    assert hpt.planned_arch(spec) == spec["arch"]  # what run() would build, without training


def test_publish_refuses_a_name_that_disagrees_and_writes_nothing(bases, tmp_path):
    from zoo.publish import publish

    folder = bases("r18")  # target-animals-r18
    mirror, catalog = tmp_path / "mirror", tmp_path / "catalog.json"
    for wrong, part in (("target-animals-r50", "arch 'r50' in the name, 'r18'"),
                        ("hpt-animals-r18", "strategy 'hpt' in the name, 'target'"),
                        ("target-digits-r18", "domain 'digits' in the name, 'animals'")):
        with pytest.raises(NameMismatchError, match=part):
            publish(folder, "zoo/x", mirror=mirror, catalog=catalog, name=wrong)
    assert not mirror.exists() and not catalog.exists()
    tampered = tmp_path / "tampered"  # a zoo.json whose name was edited by hand to claim another arch
    import shutil
    shutil.copytree(folder, tampered)
    meta = _read(tampered, "zoo.json")
    (tampered / "zoo.json").write_text(json.dumps({**meta, "name": "target-animals-mnv2"}))
    with pytest.raises(NameMismatchError, match="arch 'mnv2' in the name, 'r18'"):
        publish(tampered, "zoo/x", mirror=mirror, catalog=catalog)
    assert not mirror.exists()
    assert publish(folder, "zoo/target-animals-r18", mirror=mirror, catalog=catalog)["name"] == "target-animals-r18"
