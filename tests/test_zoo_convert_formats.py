"""zoo convert: the real key layouts of MoCo / OpenSelfSup / SimCLR tools, matching by name, hostile values and files."""
from __future__ import annotations

import json
import os
import random

import pytest
import torch
from safetensors.torch import load_file

import zoo
from tests.layouts import (backbone_state, moco_official, openselfsup_byol, openselfsup_moco, openselfsup_simclr,
                           simclrv2_pytorch)
from zoo.cli import main as zoo_main
from zoo.convert import convert
from zoo.errors import CheckpointFormatError, UnknownNameError, UnsafeCheckpointError
from zoo.integrity import sha256_file


@pytest.fixture(scope="module")
def r18():
    return backbone_state("resnet18", seed=3)


def _save(tmp_path, data, name="ckpt.pth"):
    path = tmp_path / name
    torch.save(data, path)
    return path


def _assert_weights_equal(folder, reference: dict):
    weights = load_file(str(folder / "model.safetensors"))
    assert set(weights) == set(reference)
    for key, value in reference.items():
        assert torch.equal(weights[key], value.to(weights[key].dtype)), key


@pytest.mark.parametrize("layout, fmt", [(openselfsup_moco, "openselfsup-moco"), (openselfsup_simclr, "openselfsup-simclr"),
                                         (openselfsup_byol, "openselfsup-byol")])
def test_openselfsup_training_checkpoints_convert_exactly(tmp_path, r18, layout, fmt):
    source = _save(tmp_path, layout(r18), "epoch_200.pth")
    folder = convert(source, tmp_path / "out", timm_arch="resnet18", name="hpt-chexpert-r18",
                     preprocessing="hpt:chexpert", meta={"method": "moco_v2", "domain": "chexpert"})
    _assert_weights_equal(folder, r18)
    meta, config = (json.loads((folder / f).read_text()) for f in ("zoo.json", "config.json"))
    assert meta["source_checkpoint"] == {"file": "epoch_200.pth", "sha256": sha256_file(source), "layout": fmt}
    assert meta["lineage"][0]["sha256"] == sha256_file(source) and meta["lineage"][0]["format"] == fmt
    cfg = config["pretrained_cfg"]
    assert cfg["mean"] == [0.5028] * 3 and cfg["std"] == [0.2919] * 3  # the HPT config's CheXpert statistics
    assert cfg["interpolation"] == "bilinear" and cfg["crop_pct"] == 0.875 and meta["preprocessing"]["preset"] == \
        "hpt:chexpert"


def test_openselfsup_backbone_alias_that_differs_is_ambiguous(tmp_path, r18):
    data = openselfsup_moco(r18)
    data["state_dict"]["backbone.layer1.0.conv1.weight"] = data["state_dict"]["backbone.layer1.0.conv1.weight"] + 1
    with pytest.raises(CheckpointFormatError, match="ambiguous backbone.*layer1.0.conv1.weight"):
        convert(_save(tmp_path, data), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="moco")
    assert not (tmp_path / "out").exists()


def test_extracted_openselfsup_backbone_and_unknown_keys(tmp_path, r18):
    extracted = {"state_dict": dict(r18), "author": "OpenSelfSup"}  # tools/extract_backbone_weights.py
    folder = convert(_save(tmp_path, extracted), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="moco")
    _assert_weights_equal(folder, r18)
    strange = openselfsup_simclr(r18)
    strange["state_dict"]["memory_bank.feature_bank"] = torch.zeros(4, 4)
    with pytest.raises(CheckpointFormatError, match="outside the format's known parts: memory_bank"):
        convert(_save(tmp_path, strange, "s.pth"), tmp_path / "out2", timm_arch="resnet18", name="x",
                preprocessing="simclr")


@pytest.mark.parametrize("version", [1, 2])
def test_moco_official_layout_implies_moco_preprocessing(tmp_path, r18, version):
    folder = convert(_save(tmp_path, moco_official(r18, version), "moco.pth.tar"), tmp_path / "out",
                     timm_arch="resnet18", name="moco-test-r18")
    _assert_weights_equal(folder, r18)
    cfg = zoo.preprocessing(folder)
    assert (cfg["interpolation"], cfg["crop_pct"]) == ("bilinear", 0.875)  # not timm's bicubic / 0.95
    assert list(cfg["mean"]) == [0.485, 0.456, 0.406] and zoo.info(folder)["source_checkpoint"]["layout"] == "moco"


def test_simclrv2_pytorch_names_map_one_by_one(tmp_path):
    import timm

    reference = backbone_state("resnet26", seed=5)  # a bottleneck ResNet like r50_1x_sk0, a third of the bytes
    reference["fc.weight"], reference["fc.bias"] = torch.randn(1000, 2048), torch.randn(1000)
    folder = convert(_save(tmp_path, simclrv2_pytorch(reference), "r50_1x_sk0.pth"), tmp_path / "out",
                     timm_arch="resnet26", name="simclr-test")
    _assert_weights_equal(folder, reference)
    config = json.loads((folder / "config.json").read_text())
    assert config["num_classes"] == 1000
    assert config["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0] and config["pretrained_cfg"]["std"] == [1.0, 1.0, 1.0]
    model = zoo.load(folder, num_classes=None)
    expected = timm.create_model("resnet26", num_classes=1000)
    expected.load_state_dict(reference)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), expected.eval()(x))
    sk1 = simclrv2_pytorch(reference)
    sk1["resnet"]["net.1.blocks.0.net.2.mixing_conv.0.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError, match="sk1"):
        convert(_save(tmp_path, sk1, "r50_1x_sk1.pth"), tmp_path / "out2", timm_arch="resnet26", name="x")


def test_same_shape_tensors_in_swapped_order_land_by_name(tmp_path, r18):
    """Issue 11.14: conv1 and conv2 of a basic block have the same shape; order in the file must not matter."""
    keys = list(r18)
    swapped = {k: r18[k] for k in reversed(keys)}
    folder = convert(_save(tmp_path, swapped), tmp_path / "out", timm_arch="resnet18", name="x",
                     preprocessing="torchvision")
    _assert_weights_equal(folder, r18)


def test_torchvision_mobilenet_names_map_by_name_in_any_order(tmp_path, torchvision_mnv2):
    state = torchvision_mnv2.state_dict()
    shuffled = {k: state[k] for k in sorted(state, key=lambda k: hash(k) % 9973)}
    folder = convert(_save(tmp_path, shuffled), tmp_path / "out", timm_arch="mobilenetv2_100", name="x",
                     preprocessing="torchvision")
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(zoo.load(folder, num_classes=None)(x), torchvision_mnv2(x))
    ambiguous = dict(state)
    ambiguous["conv_stem.weight"] = state["features.0.0.weight"].clone()  # the same target named twice
    with pytest.raises(CheckpointFormatError, match="ambiguous mapping.*conv_stem.weight"):
        convert(_save(tmp_path, ambiguous, "a.pth"), tmp_path / "out2", timm_arch="mobilenetv2_100", name="x",
                preprocessing="torchvision")


@pytest.mark.parametrize("poison, message", [
    (lambda t: t.index_fill(0, torch.tensor([0]), float("nan")), "NaN or inf"),
    (lambda t: t.index_fill(0, torch.tensor([0]), float("inf")), "NaN or inf"),
    (lambda t: t.double() + 1e-12, "float64 with values float32 cannot hold exactly"),
    (lambda t: t.long(), "torch.int64 where float weights are expected"),
])
def test_broken_values_are_refused(tmp_path, r18, poison, message):
    state = dict(r18)
    state["layer2.0.conv1.weight"] = poison(state["layer2.0.conv1.weight"])
    with pytest.raises(CheckpointFormatError, match=message):
        convert(_save(tmp_path, state), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="torchvision")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_lossless_casts_are_accepted(tmp_path, r18):
    state = {k: (v.double() if v.is_floating_point() else v.int()) for k, v in r18.items()}  # exact in float32
    state["fc.weight"] = torch.randn(10, 512).half()
    state["fc.bias"] = torch.randn(10).bfloat16()
    folder = convert(_save(tmp_path, state), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="torchvision")
    weights = load_file(str(folder / "model.safetensors"))
    assert weights["fc.weight"].dtype == torch.float32 and torch.equal(weights["fc.weight"], state["fc.weight"].float())
    assert weights["layer1.0.bn1.num_batches_tracked"].dtype == torch.long
    _assert_weights_equal(folder, {k: v for k, v in state.items() if not k.startswith("fc.")} | {
        "fc.weight": state["fc.weight"], "fc.bias": state["fc.bias"]})


@pytest.mark.parametrize("content, message, error", [
    (b"", "is empty \\(0 bytes\\)", CheckpointFormatError),
    (b"\x13" + random.Random(1).randbytes(4095), "not a PyTorch checkpoint", CheckpointFormatError),
    (b"\x80\x02" + b"\x00" * 100, "pickle stream is corrupt or truncated", CheckpointFormatError),
    (b"<!DOCTYPE html><html><body>Access denied</body></html>", "HTML page", CheckpointFormatError),
    (b"epoch,loss\n1,0.5\n", "a text file", CheckpointFormatError),
])
def test_files_that_are_not_checkpoints_say_what_they_are(tmp_path, content, message, error):
    source = tmp_path / "model.pth"
    source.write_bytes(content)
    with pytest.raises(error, match=message) as raised:
        convert(source, tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="moco")
    assert not isinstance(raised.value, UnsafeCheckpointError)  # random bytes are not "a pickle that runs code"
    assert not (tmp_path / "out").exists()


def test_hostile_key_names_are_truncated_in_messages(tmp_path, r18):
    state = dict(r18)
    state["x" * 100_000] = torch.zeros(1)
    with pytest.raises(CheckpointFormatError) as raised:
        convert(_save(tmp_path, state), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="moco")
    assert "unexpected keys: xxxx" in str(raised.value) and len(str(raised.value)) < 1000
    with pytest.raises(CheckpointFormatError, match="non-text keys"):
        convert(_save(tmp_path, {**r18, 7: torch.zeros(1)}, "ints.pth"), tmp_path / "out", timm_arch="resnet18",
                name="x", preprocessing="moco")


def test_truncated_zip_checkpoint(tmp_path, r18):
    source = _save(tmp_path, r18)
    source.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    with pytest.raises(CheckpointFormatError, match="truncated or corrupt"):
        convert(source, tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="moco")


def test_plain_state_dict_without_stated_preprocessing_is_refused(tmp_path, r18):
    with pytest.raises(CheckpointFormatError, match="--preprocessing"):
        convert(_save(tmp_path, r18), tmp_path / "out", timm_arch="resnet18", name="x")
    with pytest.raises(UnknownNameError, match="preprocessing preset"):
        convert(_save(tmp_path, r18), tmp_path / "out", timm_arch="resnet18", name="x", preprocessing="hpt:mars")


def test_cli_convert_error_paths_exit_2_and_write_nothing(tmp_path, r18, capsys):
    source = _save(tmp_path, moco_official(r18))
    text = tmp_path / "notes.txt"
    text.write_text("these are my notes, not weights\n")
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    cases = [([str(source), str(tmp_path / "o1"), "--arch", "resnet5O"], "unknown architecture 'resnet5O'"),
             ([str(source), str(a_file), "--arch", "r18"], "is a file; give a folder path"),
             ([str(text), str(tmp_path / "o3"), "--arch", "r18"], "a text file, not a checkpoint"),
             ([str(tmp_path / "missing.pth"), str(tmp_path / "o4"), "--arch", "r18"], "does not exist"),
             ([str(source), str(tmp_path / "o5"), "--arch", "r18", "--format", "mocco"], "unknown source format"),
             ([str(source), str(tmp_path / "o6"), "--arch", "mnv2"], "does not fit|no mobilenetv2_100 name")]
    before = sorted(os.listdir(tmp_path))
    for argv, message in cases:
        assert zoo_main(["convert", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("zoo: error:") and __import__("re").search(message, err), (argv, err)
    assert sorted(os.listdir(tmp_path)) == before and a_file.read_text() == "x"
    assert zoo_main(["convert", str(source), str(tmp_path / "ok"), "--arch", "r18", "--url",
                     "https://example.org/moco.pth.tar"]) == 0
    assert zoo.info(tmp_path / "ok")["source_checkpoint"]["url"] == "https://example.org/moco.pth.tar"
    hpt = _save(tmp_path, openselfsup_moco(r18), "epoch_100.pth")
    assert zoo_main(["convert", str(hpt), str(tmp_path / "hpt"), "--arch", "r18"]) == 2  # preprocessing unknown
    assert "--preprocessing" in capsys.readouterr().err and not (tmp_path / "hpt").exists()
    assert zoo_main(["convert", str(hpt), str(tmp_path / "hpt"), "--arch", "r18", "--preprocessing", "hpt:kids",
                     "--format", "openselfsup-moco", "--domain", "chest_xray_kids"]) == 0
    assert zoo.preprocessing(tmp_path / "hpt")["mean"] == [0.4815] * 3
