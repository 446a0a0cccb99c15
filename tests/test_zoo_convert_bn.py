"""Foreign checkpoints in, strict keys, safe unpickling; BN overlays and exact recalibration; local folders."""
from __future__ import annotations

import collections
import pickle

import pytest
import torch

import zoo
from zoo.bn import bn_modules
from zoo.convert import convert
from zoo.defaults import mobilenet_v2_file
from zoo.errors import CheckpointFormatError, IncompatibleOverlayError, IntegrityError, UnsafeCheckpointError


@pytest.fixture(scope="module")
def torchvision_state():
    return torch.load(mobilenet_v2_file(), weights_only=True)


def _logits_equal(folder, reference_state):
    import torchvision

    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(reference_state)
    model = zoo.load(folder, num_classes=None)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(model(x), reference.eval()(x))


def test_torchvision_state_dict_maps_onto_timm(tmp_path, torchvision_state):
    source = tmp_path / "tv.pth"
    torch.save(torchvision_state, source)
    folder = convert(source, tmp_path / "out", timm_arch="mobilenetv2_100", name="tv-mnv2",
                     preprocessing="torchvision")
    assert _logits_equal(folder, torchvision_state)
    assert zoo.info(folder)["source_checkpoint"]["layout"] == "plain"


def test_moco_checkpoint_drops_key_encoder_queue_and_head(tmp_path):
    import timm

    reference = timm.create_model("resnet18", num_classes=0).eval()
    state = {f"module.encoder_q.{k}": v for k, v in reference.state_dict().items()}
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.2.weight":
                  torch.randn(128, 512), "module.encoder_k.conv1.weight": torch.randn(64, 3, 7, 7),
                  "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1, dtype=torch.long)})
    source = tmp_path / "moco_v2_800ep.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state}, source)
    folder = convert(source, tmp_path / "out", timm_arch="resnet18", name="moco-test-r18")
    model = zoo.load(folder)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert zoo.info(folder)["source_checkpoint"]["layout"] == "moco"


def test_openselfsup_backbone_pickle(tmp_path):
    import timm

    reference = timm.create_model("resnet18", num_classes=0).eval()
    source = tmp_path / "hpt.pth"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in reference.state_dict().items()}}, source)
    model = zoo.load(convert(source, tmp_path / "out", timm_arch="resnet18", name="hpt-test-r18",
                             preprocessing="hpt:resisc"))
    assert torch.equal(model.conv1.weight, reference.conv1.weight)


class _Payload:
    def __reduce__(self):
        return (print, ("this would run code",))


def test_pickle_that_needs_code_is_refused(tmp_path):
    source = tmp_path / "evil.pth"
    with open(source, "wb") as handle:
        pickle.dump({"state_dict": {"x": _Payload()}}, handle)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        convert(source, tmp_path / "out", timm_arch="resnet18", name="evil")
    assert not (tmp_path / "out").exists()


def test_missing_keys_are_reported_by_name(tmp_path, torchvision_state):
    broken = dict(torchvision_state)
    del broken["features.3.conv.1.0.weight"]
    source = tmp_path / "broken.pth"
    torch.save(broken, source)
    with pytest.raises(CheckpointFormatError, match="features.3.conv.1.0.weight|missing keys"):
        convert(source, tmp_path / "out", timm_arch="mobilenetv2_100", name="broken", preprocessing="torchvision")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.fixture(scope="module")
def local_checkpoint(tmp_path_factory, torchvision_state):
    root = tmp_path_factory.mktemp("local")
    torch.save(torchvision_state, root / "tv.pth")
    return convert(root / "tv.pth", root / "ckpt", timm_arch="mobilenetv2_100", name="local-mnv2",
                   preprocessing="torchvision")


def test_recalibration_equals_exact_statistics_of_layer_inputs():
    """Cumulative average over unequal batches == mean/unbiased var of every BN input over all data."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=0)
    batches = [torch.randn(n, 3, 32, 32) * 2 + 0.5 for n in (16, 16, 7)]
    inputs = collections.defaultdict(list)
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: inputs[name].append(args[0].detach().clone()))
             for name, m in bn_modules(model)]
    zoo.recalibrate_bn(model, batches)
    for hook in hooks:
        hook.remove()
    assert not model.training
    for name, module in bn_modules(model):
        x = torch.cat(inputs[name]).double()
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)
        torch.testing.assert_close(module.running_mean.double(), flat.mean(1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(module.running_var.double(), flat.var(1, unbiased=True), rtol=1e-4, atol=1e-5)


def test_overlay_round_trip_and_refuses_other_trunks(local_checkpoint, tmp_path):
    meta = zoo.info(local_checkpoint)
    model = zoo.load(local_checkpoint)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    zoo.recalibrate_bn(model, [torch.rand(8, 3, 64, 64) for _ in range(2)])
    overlay = tmp_path / "noise.safetensors"
    zoo.extract_bn(model, overlay, trunk_sha256=meta["trunk_sha256"], domain="noise")
    fresh = zoo.load(local_checkpoint)
    zoo.apply_bn(fresh, overlay, meta["trunk_sha256"])
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, model.state_dict()[key])
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(value, original[key])
    with pytest.raises(IncompatibleOverlayError, match="made for trunk"):
        zoo.apply_bn(zoo.load(local_checkpoint), overlay, "f" * 64)


def test_local_folder_is_verified_on_load(local_checkpoint, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(local_checkpoint, copy)
    copied = zoo.load(copy).state_dict()
    assert all(torch.equal(value, copied[key]) for key, value in zoo.load(local_checkpoint).state_dict().items())
    with open(copy / "model.safetensors", "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\x7f" * 16)
    with pytest.raises(IntegrityError, match="re-export"):
        zoo.load(copy)
