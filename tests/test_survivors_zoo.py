"""Defects that once passed the whole suite (issue 17), zoo side, each against an independent reference.

Every test here fails on a specific realistic mutant of zoo/ (named in its docstring) and was checked
by applying that mutant by hand.
"""
from __future__ import annotations

import copy

import pytest
import torch

import zoo
from zoo.bn import bn_keys, bn_modules
from zoo.build import build_from_file
from zoo.checkpoint import save_state_dict
from zoo.errors import CheckpointFormatError
from zoo.names import ModelName, format_name, parse_name


def _resnet(seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("resnet18", num_classes=0)


@pytest.fixture(scope="module")
def trained_looking_resnet():
    """A ResNet-18 whose running statistics are far from the (0, 1) init, as in any trained model."""
    model = _resnet()
    with torch.no_grad():
        for _, module in bn_modules(model):
            module.running_mean.uniform_(-2, 2), module.running_var.uniform_(0.2, 5)
    return model.eval()


# ---------------------------------------------------------------- recalibration
def test_recalibration_equals_torch_batchnorm_in_train_mode_with_cumulative_average(trained_looking_resnet):
    """Mutant: recalibrate_bn runs the forward passes with BN in eval mode (the old statistics normalise).

    Reference: torch's own BatchNorm, reset and switched to momentum=None (cumulative average), in
    train mode on the same batch; with one batch the cumulative average is that batch's statistics."""
    batch = torch.randn(12, 3, 32, 32, generator=torch.Generator().manual_seed(3)) * 1.5 + 0.4
    reference = copy.deepcopy(trained_looking_resnet)
    for _, module in bn_modules(reference):
        module.reset_running_stats()
        module.momentum = None
    reference.train()
    with torch.no_grad():
        reference(batch)

    model = copy.deepcopy(trained_looking_resnet)
    # a second batch beyond max_batches must be ignored
    assert zoo.recalibrate_bn(model, [batch, torch.randn(4, 3, 32, 32) + 9.0], max_batches=1) is model
    assert not model.training
    expected = reference.state_dict()
    for key in bn_keys(model):
        torch.testing.assert_close(model.state_dict()[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
    # the deep layers' statistics are not those an eval-mode pass would give
    deep = "layer4.1.bn2.running_var"
    assert not torch.allclose(trained_looking_resnet.state_dict()[deep], expected[deep], rtol=0.1)


def test_recalibration_reads_images_from_every_batch_layout(trained_looking_resnet):
    """(image, label) tuples, {"image": ...} and {"pixel_values": ...} dicts give the same statistics."""
    batch = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    results = []
    for wrapped in (batch, (batch, torch.zeros(6)), {"image": batch}, {"pixel_values": batch}):
        model = zoo.recalibrate_bn(copy.deepcopy(trained_looking_resnet), [wrapped])
        results.append(model.state_dict()["layer2.0.bn1.running_mean"])
    assert all(torch.equal(results[0], other) for other in results[1:])
    assert zoo.recalibrate_bn(copy.deepcopy(trained_looking_resnet), [batch]).state_dict()[
        "bn1.num_batches_tracked"].item() == 1


# ---------------------------------------------------------------- overlays
@pytest.mark.parametrize("damage", ["missing", "unexpected", "stats_only_claims_affine"])
def test_partial_or_padded_overlay_is_refused_and_changes_nothing(tmp_path, damage):
    """Mutant: apply_bn accepts an overlay that lacks some BN tensors (only unexpected keys refused),
    leaving those layers with the trunk's statistics."""
    source = _resnet(seed=1)
    zoo.recalibrate_bn(source, [torch.randn(4, 3, 32, 32)])
    overlay = zoo.extract_bn(source)
    kind = "stats"
    if damage == "missing":
        del overlay["layer3.1.bn2.running_var"]
    elif damage == "unexpected":
        overlay["layer3.1.bn9.running_var"] = torch.ones(3)
    else:
        kind = "stats+affine"
    path = tmp_path / "overlay.safetensors"
    save_state_dict(overlay, path, {"zoo_overlay": "1", "trunk_sha256": "a" * 64, "kind": kind})
    target = _resnet(seed=2).eval()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointFormatError, match="does not fit") as caught:
        zoo.apply_bn(target, path, "a" * 64)
    if damage == "missing":
        assert "missing keys: layer3.1.bn2.running_var" in str(caught.value)
    if damage == "unexpected":
        assert "unexpected keys: layer3.1.bn9.running_var" in str(caught.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


# ---------------------------------------------------------------- names
@pytest.mark.parametrize("steps,text", [(1500, "1500"), (1000, "1k"), (2000, "2k"), (999, "999"),
                                        (200500, "200500"), (200000, "200k"), (0, "0")])
def test_step_counts_abbreviate_only_whole_thousands(steps, text):
    """Mutant: every step count >= 1000 is written in thousands, so 1500 steps becomes "1k"."""
    name = ModelName("target", "chexpert", "r50", steps=steps)
    assert format_name(name) == f"target-chexpert-r50-{text}"
    assert parse_name(format_name(name)) == name


# ---------------------------------------------------------------- strict building
@pytest.mark.parametrize("damage", ["missing", "unexpected"])
def test_build_from_file_names_the_mismatched_keys_before_loading(tmp_path, damage):
    """Mutant: build_from_file skips the key comparison, so a missing tensor surfaces later as torch's
    generic load_state_dict RuntimeError (or a meta tensor) instead of a named CheckpointFormatError."""
    state = _resnet().state_dict()
    if damage == "missing":
        del state["layer2.0.conv1.weight"]
    else:
        state["layer2.0.extra"] = torch.zeros(2)
    path = tmp_path / "weights.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointFormatError) as caught:
        build_from_file("resnet18", path, 0)
    expected = "missing keys: layer2.0.conv1.weight" if damage == "missing" else "unexpected keys: layer2.0.extra"
    assert expected in str(caught.value) and str(path) in str(caught.value)


def test_build_from_file_assigns_every_tensor_exactly(tmp_path):
    reference = _resnet(seed=7).eval()
    path = tmp_path / "weights.safetensors"
    save_state_dict(reference.state_dict(), path)
    model = build_from_file("resnet18", path, 0).eval()
    state = model.state_dict()
    assert not any(t.is_meta for t in state.values())
    assert all(torch.equal(state[k], v) for k, v in reference.state_dict().items())
