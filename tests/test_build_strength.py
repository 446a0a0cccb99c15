"""zoo.build: the CIFAR stem, building on the meta device without running init, strict assignment and
its messages, and finish()'s head/device/dtype handling, each checked against timm's own model."""
from __future__ import annotations

import pytest
import torch

from zoo import build
from zoo.checkpoint import save_state_dict
from zoo.errors import CheckpointFormatError


def test_cifar_stem_is_a_3x3_stride_1_conv_without_max_pool():
    model = build.create_model("resnet18", 0, {"zoo_stem": "cifar"})
    assert (model.conv1.kernel_size, model.conv1.stride, model.conv1.padding) == ((3, 3), (1, 1), (1, 1))
    assert model.conv1.bias is None and (model.conv1.in_channels, model.conv1.out_channels) == (3, 64)
    assert isinstance(model.maxpool, torch.nn.Identity)
    assert [stage["reduction"] for stage in model.feature_info] == [1, 1, 2, 4, 8]
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    gray = build.create_model("resnet18", 5, {"zoo_stem": "cifar", "in_chans": 1})
    assert gray.conv1.in_channels == 1 and gray(torch.zeros(2, 1, 16, 16)).shape == (2, 5)
    plain = build.create_model("resnet18", 0)
    assert plain.conv1.kernel_size == (7, 7) and [s["reduction"] for s in plain.feature_info] == [2, 4, 8, 16, 32]


def test_stem_refusals_name_the_problem():
    with pytest.raises(CheckpointFormatError, match="^zoo_stem='cifar' needs a ResNet, not mobilenetv2_100$"):
        build.create_model("mobilenetv2_100", 0, {"zoo_stem": "cifar"})
    with pytest.raises(CheckpointFormatError, match=r"^unknown zoo_stem 'tiny' in model_args \(known: 'cifar'\)$"):
        build.create_model("resnet18", 0, {"zoo_stem": "tiny"})
    args = {"zoo_stem": "cifar"}
    build.create_model("resnet18", 0, args)
    assert args == {"zoo_stem": "cifar"}  # the caller's dict is not consumed


def test_meta_build_allocates_nothing_and_skips_init():
    model = build.create_on_meta("resnet18", 10)
    assert all(t.is_meta for t in model.state_dict().values())
    assert model.fc.out_features == 10
    # init code still runs normally off the meta device
    with build._SkipInitOnMeta():
        real = torch.empty(3)
        assert torch.nn.init.constant_(real, 2.0) is real and torch.equal(real, torch.full((3,), 2.0))
        assert torch.nn.init.zeros_(tensor=torch.ones(2)).sum() == 0
        meta = torch.empty(3, device="meta")
        assert torch.nn.init.ones_(tensor=meta) is meta and meta.add_(1) is meta


def test_describe_key_mismatch_sorts_and_truncates():
    missing = {f"k{i:02d}" for i in range(10)}
    assert build.describe_key_mismatch(missing, {"z", "a"}) == (
        "missing keys: k00, k01, k02, k03, k04, k05, k06, k07 (+2 more); unexpected keys: a, z")
    assert build.describe_key_mismatch(set(), {"b"}, limit=1) == "unexpected keys: b"
    assert build.describe_key_mismatch({"a", "b"}, set(), limit=1) == "missing keys: a (+1 more)"


def test_wrong_shapes_and_unreadable_files_are_format_errors(tmp_path):
    import timm

    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state["conv1.weight"] = torch.zeros(1)  # same keys, another shape
    path = tmp_path / "shapes.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointFormatError, match=f"(?s)^{path} does not fit ResNet: .*size mismatch for conv1"):
        build.build_from_file("resnet18", path, 0)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors at all")
    with pytest.raises(CheckpointFormatError, match="is not a readable safetensors file"):
        build.build_from_file("resnet18", garbage, 0)
    with pytest.raises(CheckpointFormatError, match="cannot build architecture 'resnet_nope'"):
        build.build_from_file("resnet_nope", garbage, 0)
    with pytest.raises(CheckpointFormatError, match="model_args do not fit 'resnet18'"):
        build.build_from_file("resnet18", garbage, 0, {"no_such_arg": 1})


def test_finish_keeps_removes_or_adds_the_head_and_casts():
    import timm

    model = timm.create_model("resnet18", num_classes=7).train()
    kept = build.finish(model, None, 7)
    assert kept is model and not model.training and model.fc.out_features == 7
    assert build.finish(model, 7, 7).fc.out_features == 7
    assert build.finish(timm.create_model("resnet18", num_classes=7), 0, 7)(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    fresh = build.finish(timm.create_model("resnet18", num_classes=7), 3, 7, dtype=torch.float64)
    assert fresh.fc.out_features == 3 and fresh.conv1.weight.dtype == torch.float64 and not fresh.training
    assert build.finish(timm.create_model("resnet18", num_classes=0), None, 0, device="cpu").conv1.weight.device.type == "cpu"


def test_cifar_stem_needs_both_the_stem_conv_and_the_max_pool():
    with pytest.raises(CheckpointFormatError, match="^zoo_stem='cifar' needs a ResNet, not hrnet_w18_small$"):
        build.create_on_meta("hrnet_w18_small", 0, {"zoo_stem": "cifar"})  # conv1, but no maxpool


def test_cifar_stem_reductions_stay_integers():
    model = build.create_on_meta("resnet18", 0, {"zoo_stem": "cifar"})
    assert [type(stage["reduction"]) for stage in model.feature_info] == [int] * 5  # timm indexes strides with them


def test_key_mismatch_message_names_the_model_class_and_the_keys(tmp_path):
    import timm

    state = timm.create_model("resnet18", num_classes=0).state_dict()
    state["extra.weight"] = state.pop("fc.weight", torch.zeros(1))
    path = tmp_path / "keys.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointFormatError) as caught:
        build.build_from_file("resnet18", path, 0)
    assert str(caught.value) == f"{path} does not fit ResNet: unexpected keys: extra.weight"


def test_shape_mismatch_message_keeps_400_characters_of_torchs_text(tmp_path):
    import timm

    state = {key: torch.zeros(1) for key in timm.create_model("resnet18", num_classes=0).state_dict()}
    path = tmp_path / "shapes.safetensors"
    save_state_dict(state, path)
    with pytest.raises(CheckpointFormatError) as caught:
        build.build_from_file("resnet18", path, 0)
    prefix = f"{path} does not fit ResNet: "
    assert str(caught.value).startswith(prefix + "Error(s) in loading state_dict for ResNet")
    assert len(str(caught.value)) == len(prefix) + 400  # torch's text is thousands of characters long


def test_non_persistent_buffers_the_file_cannot_carry_are_refused(tmp_path):
    """timm's Swin keeps relative_position_index as a non-persistent buffer: a safetensors file never holds
    it, so a meta build cannot fill it; the build refuses instead of returning meta tensors."""
    import timm

    args = {"embed_dim": 8, "depths": (9,), "num_heads": (1,), "img_size": 28, "window_size": 7}
    path = tmp_path / "swin.safetensors"
    save_state_dict(timm.create_model("swin_tiny_patch4_window7_224", num_classes=0, **args).state_dict(), path)
    with pytest.raises(CheckpointFormatError) as caught:
        build.build_from_file("swin_tiny_patch4_window7_224", path, 0, args)
    names = [f"layers.0.blocks.{i}.attn.relative_position_index" for i in range(8)]  # 9 such buffers, 8 named
    assert str(caught.value) == f"{path}: tensors left uninitialised after loading: {names}"


def test_finish_moves_to_a_device_without_a_dtype():
    import timm

    model = build.finish(timm.create_model("resnet18", num_classes=0), None, 0, device="meta")
    assert model.conv1.weight.is_meta and model.conv1.weight.dtype == torch.float32 and not model.training


class _Reached(torch.overrides.TorchFunctionMode):
    """Records every torch function that reaches it (entered outside _SkipInitOnMeta: what that one passes on)."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


def test_init_on_meta_tensors_stops_at_the_skip_mode_and_real_tensors_pass():
    meta, real = torch.empty(4, 4, device="meta"), torch.empty(4, 4)
    with _Reached() as reached, build._SkipInitOnMeta():
        assert torch.nn.init.normal_(meta) is meta  # positional (the Tensor method's self)
        assert torch.nn.init.kaiming_uniform_(tensor=meta) is meta  # nn.init passes tensor= by keyword
        assert meta.uniform_() is meta
    assert [name for name in reached.names if name != "__get__"] == []  # only the skip's own is_meta reads
    with _Reached() as reached, build._SkipInitOnMeta():
        torch.nn.init.constant_(tensor=real, val=3.0)
        real.add_(1)
    assert {"constant_", "add_"} <= set(reached.names) and torch.equal(real, torch.full((4, 4), 4.0))
