"""zoo.bn's refusals and metadata, exactly: what an overlay records, and what it refuses to do."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import zoo
from zoo.bn import bn_keys, overlay_metadata
from zoo.checkpoint import save_state_dict
from zoo.errors import CheckpointFormatError, IncompatibleOverlayError


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Conv2d(4, 2, 1), torch.nn.BatchNorm2d(2, affine=False))


def test_bn_keys_list_stats_and_optionally_affine_of_every_bn_layer():
    assert bn_keys(_net()) == ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                               "4.running_mean", "4.running_var", "4.num_batches_tracked"]
    assert bn_keys(_net(), affine=True)[:5] == ["1.running_mean", "1.running_var", "1.num_batches_tracked",
                                                "1.weight", "1.bias"]
    assert "4.weight" not in bn_keys(_net(), affine=True)  # affine=False layer has none
    assert bn_keys(torch.nn.BatchNorm1d(3)) == ["running_mean", "running_var", "num_batches_tracked"]


def test_extract_writes_the_binding_metadata(tmp_path):
    path = tmp_path / "o.safetensors"
    overlay = zoo.extract_bn(_net(), path, trunk_sha256="ab" * 32, domain="flowers", affine=True)
    assert set(load_file(str(path))) == set(overlay) == set(bn_keys(_net(), affine=True))
    assert overlay_metadata(path) == {"format": "pt", "zoo_overlay": "1", "trunk_sha256": "ab" * 32,
                                      "domain": "flowers", "kind": "stats+affine"}
    zoo.extract_bn(_net(), tmp_path / "s.safetensors", trunk_sha256="cd" * 32)
    assert overlay_metadata(tmp_path / "s.safetensors")["kind"] == "stats"
    with pytest.raises(ValueError, match="^trunk_sha256 is required to save an overlay"):
        zoo.extract_bn(_net(), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    with pytest.raises(CheckpointFormatError, match="^Linear has no BatchNorm layers: nothing to extract$"):
        zoo.extract_bn(torch.nn.Linear(2, 2))


def test_apply_refuses_foreign_files_and_other_trunks_and_applies_affine(tmp_path):
    plain = tmp_path / "plain.safetensors"
    save_state_dict({"1.running_mean": torch.zeros(4)}, plain)
    with pytest.raises(CheckpointFormatError, match="is not a zoo BN overlay"):
        zoo.apply_bn(_net(), plain, None)
    source = _net()
    with torch.no_grad():
        source[1].weight.fill_(3.0), source[1].running_var.fill_(5.0)
    path = tmp_path / "o.safetensors"
    zoo.extract_bn(source, path, trunk_sha256="ab" * 32, affine=True)
    with pytest.raises(IncompatibleOverlayError) as caught:
        zoo.apply_bn(_net(), path, "cd" * 32)
    assert str(caught.value) == (f"BN overlay o.safetensors was made for trunk {'ab' * 6}..., not for this trunk "
                                 f"{'cd' * 6}...; recompute it with zoo.recalibrate_bn + zoo.extract_bn on this model")
    target = _net()
    assert zoo.apply_bn(target, path, "ab" * 32) is target
    assert torch.equal(target[1].weight, torch.full((4,), 3.0)) and torch.equal(target[1].running_var, torch.full((4,), 5.0))
    unchecked = zoo.apply_bn(_net(), path, None)  # None: the caller vouches for the trunk
    assert torch.equal(unchecked[1].weight, torch.full((4,), 3.0))


def test_recalibration_refusals():
    with pytest.raises(CheckpointFormatError, match="^Linear has no BatchNorm layers to recalibrate$"):
        zoo.recalibrate_bn(torch.nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(ValueError, match="^recalibrate_bn got no batches$"):
        zoo.recalibrate_bn(_net(), [])
    model = _net()
    model[1].momentum = 0.5
    zoo.recalibrate_bn(model, [torch.randn(2, 3, 5, 5), torch.randn(3, 3, 5, 5)])
    assert model[1].momentum == 0.5 and int(model[1].num_batches_tracked) == 2 and not model.training


def _overlay_file(tmp_path, change, metadata=None):
    overlay = zoo.extract_bn(_net())
    change(overlay)
    path = tmp_path / "bad.safetensors"
    save_state_dict(overlay, path, metadata if metadata is not None else
                    {"zoo_overlay": "1", "trunk_sha256": "ab" * 32, "kind": "stats"})
    return path


@pytest.mark.parametrize("change,message", [
    (lambda o: o.update({"1.running_mean": torch.zeros(1)}),
     "BN overlay bad.safetensors: 1.running_mean has shape [1], the model's has [4]; the overlay was made for "
     "another architecture"),
    (lambda o: o.update({"1.running_var": torch.ones(4, dtype=torch.int64)}),
     "BN overlay bad.safetensors: 1.running_var is torch.int64, the model's is torch.float32"),
    (lambda o: o.update({"4.running_mean": torch.tensor([0.0, float("nan")])}),
     "BN overlay bad.safetensors: 4.running_mean has NaN or infinite values"),
    (lambda o: o.update({"1.running_var": torch.tensor([1.0, -1.0, 1.0, 1.0])}),
     "BN overlay bad.safetensors: 1.running_var has negative values (a variance or count cannot be negative); "
     "recompute the overlay with zoo.recalibrate_bn"),
    (lambda o: o.update({"4.num_batches_tracked": torch.tensor(-3)}),
     "BN overlay bad.safetensors: 4.num_batches_tracked has negative values (a variance or count cannot be "
     "negative); recompute the overlay with zoo.recalibrate_bn"),
])
def test_hostile_overlay_values_are_refused_by_name(tmp_path, change, message):
    path = _overlay_file(tmp_path, change)
    target = _net()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointFormatError) as caught:
        zoo.apply_bn(target, path, "ab" * 32)
    assert str(caught.value) == message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())
    # negative means are fine: only variances and counts must be >= 0
    ok = _overlay_file(tmp_path, lambda o: o.update({"1.running_mean": -torch.ones(4)}))
    assert torch.equal(zoo.apply_bn(_net(), ok, "ab" * 32)[1].running_mean, -torch.ones(4))


def test_unreadable_or_unbound_overlays(tmp_path):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 3)
    with pytest.raises(CheckpointFormatError, match=r"^garbage\.safetensors is not a readable safetensors file \("):
        zoo.apply_bn(_net(), garbage, None)
    unbound = _overlay_file(tmp_path, lambda o: None, {"zoo_overlay": "1", "kind": "stats"})
    with pytest.raises(IncompatibleOverlayError, match=r"^BN overlay bad\.safetensors was made for trunk \.\.\., "):
        zoo.apply_bn(_net(), unbound, "cd" * 32)
    path = tmp_path / "plain.safetensors"
    zoo.extract_bn(_net(), path, trunk_sha256="ab" * 32)
    assert overlay_metadata(path)["domain"] == ""
