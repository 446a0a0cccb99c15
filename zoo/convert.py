"""Import foreign checkpoints into the zoo format: safe reading, tensors matched by name, values checked.

Reading: the file is sniffed first (empty, text/HTML, safetensors, neither zip nor pickle are
named as such), then ``torch.load(weights_only=True)``; a pickle that needs to run code is refused.

Source formats (``--format``; detected from the keys when not given), each an explicit key rule:

==================  =========================================================================
moco                facebookresearch/moco ``main_moco.py``: ``{"state_dict": {"module.encoder_q.*"}}``;
                    keeps ``module.encoder_q.*`` except its ``fc`` (the MLP projection head); drops
                    ``module.encoder_k.*``, ``module.queue``, ``module.queue_ptr``.
openselfsup-moco    OpenSelfSup / HPT training checkpoint (mmcv ``{"meta", "state_dict", "optimizer"}``):
                    backbone ``encoder_q.0.*``; ``backbone.*`` is the same module registered twice and
                    must hold identical tensors; drops ``encoder_q.1.*`` (neck), ``encoder_k.*``, ``queue*``.
openselfsup-simclr  ``backbone.*``; drops ``neck.*`` and ``head.*``.
openselfsup-byol    ``online_net.0.*`` (= ``backbone.*``); drops ``online_net.1.*``, ``target_net.*``, ``head.*``.
openselfsup         any other OpenSelfSup model: ``backbone.*``; drops ``neck.*`` and ``head.*``.
simclrv2-pytorch    Separius/SimCLRv2-Pytorch ``convert.py``: ``{"resnet": {"net.*", "fc.*"}, "head": ...}``;
                    ``net.*`` renamed to torchvision/timm ResNet names (1x, sk0 only).
plain               a state dict with torchvision or timm names (``module.`` stripped when on every key):
                    torchvision classifiers, tonylins/simclr-converter output, OpenSelfSup
                    ``extract_backbone_weights.py`` output; torchvision MobileNetV2 names are renamed.
==================  =========================================================================

Every key the rule keeps must land on exactly one parameter of the timm model, every parameter
must be filled, shapes must agree; nothing is matched by position. Values: NaN/inf are refused;
float16/bfloat16 widen to float32 (exact); float64 is accepted only when float32 holds every
value exactly; integer or bool tensors where weights are expected are refused.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
from pathlib import Path

import torch

from .build import create_on_meta, describe_key_mismatch
from .checkpoint import timm_config, write_checkpoint
from .errors import CheckpointFormatError, UnknownNameError, UnsafeCheckpointError
from .integrity import sha256_file

FORMATS = ("moco", "openselfsup-moco", "openselfsup-simclr", "openselfsup-byol", "openselfsup", "simclrv2-pytorch",
           "plain")
# format -> preprocessing preset it implies (None: the format says nothing about preprocessing)
IMPLIED_PRESET = {"moco": "moco", "simclrv2-pytorch": "simclr"}


def _show(keys, limit: int = 6) -> str:
    keys = sorted(str(k)[:80] for k in keys)  # hostile files can hold absurdly long key names
    return ", ".join(keys[:limit]) + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


# ---------------------------------------------------------------------------------------------- reading
def _sniff(path: Path) -> str:
    """'zip' | 'pickle' | 'safetensors'; anything else is refused with what the file looks like."""
    if not path.exists():
        raise CheckpointFormatError(f"{path} does not exist; give the path of the downloaded checkpoint file")
    if path.is_dir():
        raise CheckpointFormatError(f"{path} is a folder, not a checkpoint file; give the .pth/.pth.tar file "
                                    f"(a zoo checkpoint folder needs no conversion: zoo.load({str(path)!r}))")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointFormatError(f"{path} is empty (0 bytes): the download or copy was interrupted; fetch the "
                                    f"file again")
    with open(path, "rb") as handle:
        head = handle.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    looks = "not a PyTorch checkpoint (neither torch's zip format nor a pickle)"
    try:
        text = head.decode("utf-8")
        if text.lstrip().lower().startswith(("<!doctype html", "<html")):
            looks = "an HTML page, not a checkpoint (a download that returned an error or login page?)"
        else:
            looks = f"a text file, not a checkpoint (starts with {text[:40]!r})"
    except UnicodeDecodeError:
        if head.startswith(b"\x89HDF"):
            looks = "an HDF5 file (Keras?), not a PyTorch checkpoint"
    raise CheckpointFormatError(f"{path} is {looks}. Give the PyTorch checkpoint file itself (.pth/.pth.tar/.pt, "
                                f"or .safetensors); TensorFlow checkpoints must first be converted to PyTorch.")


def read_pickle_safely(path: str | os.PathLike) -> dict:
    """The checkpoint's top-level dict, loaded without ever running code from the file."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:  # safetensors raises its own SafetensorError
            raise CheckpointFormatError(f"{path} looks like safetensors but cannot be read: {error}") from None
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if _well_formed_pickle(path, kind):  # valid pickle, refused by weights_only: it would run code
            detail = re.search(r"Unsupported global: [^\n]*", str(error))
            what = detail.group(0)[:160] if detail else "it uses objects outside the tensor allow-list"
            raise UnsafeCheckpointError(
                f"{path} is a pickle that needs to run code to load ({what}; refused, weights_only=True). Re-save it "
                f"as a plain state dict of tensors (torch.save(model.state_dict(), ...)) in a trusted environment, "
                f"then convert that.") from None
        raise CheckpointFormatError(f"{path} is not a readable checkpoint: its pickle stream is corrupt or truncated; "
                                    f"fetch the file again") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointFormatError(f"{path} is not a readable checkpoint (truncated or corrupt archive: "
                                    f"{str(error)[:160]}); fetch the file again") from None
    if not isinstance(data, dict):
        raise CheckpointFormatError(f"{path} holds a {type(data).__name__}, not a state dict")
    return data


_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _well_formed_pickle(path: Path, kind: str) -> bool:
    """Whether the checkpoint's pickle stream(s) parse as valid opcodes (pickletools only parses, never runs)."""
    import pickletools
    import zipfile

    def parses(handle, count):
        for _ in range(count):
            last = None
            for last in pickletools.genops(handle):
                pass
            if last is None or last[0].name != "STOP":
                return False
        return True

    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
                return member is not None and parses(archive.open(member), 1)
        with open(path, "rb") as handle:
            handle.seek(0)
            opcodes = list(pickletools.genops(handle))
            magic = next((arg for op, arg, _ in opcodes if op.name in ("LONG1", "BININT", "LONG")), None)
            # torch's legacy format: magic number, protocol, sys info, then the object pickle
            return parses(handle, 3) if magic == _TORCH_LEGACY_MAGIC else opcodes[-1][0].name == "STOP"
    except (ValueError, EOFError, zipfile.BadZipFile, OSError, IndexError):
        return False


# ---------------------------------------------------------------------------------------------- formats
def _state(data: dict) -> dict:
    state = data.get("state_dict")
    return state if isinstance(state, dict) else data


def detect_format(data: dict) -> str:
    """The source format from the keys; refuses when the keys fit more than one format."""
    if isinstance(data.get("resnet"), dict) and isinstance(data.get("head"), dict):
        return "simclrv2-pytorch"
    keys = [k for k in _state(data) if isinstance(k, str)]

    def has(prefix):
        return any(k.startswith(prefix) for k in keys)

    found = [name for name, test in (("moco", has("module.encoder_q.")),
                                     ("openselfsup-moco", has("encoder_q.0.")),
                                     ("openselfsup-byol", has("online_net.0.")),
                                     ("openselfsup-simclr", has("backbone.") and has("neck.") and not has("encoder_q.")
                                      and not has("online_net."))) if test]
    if len(found) > 1:
        raise CheckpointFormatError(f"the keys fit several source formats ({', '.join(found)}); say which with "
                                    f"--format {{{','.join(FORMATS)}}}")
    if found:
        return found[0]
    return "openselfsup" if has("backbone.") else "plain"


# format -> (prefix kept as the backbone, alias prefix that must be identical, prefixes dropped)
_RULES = {
    "moco": ("module.encoder_q.", None, ("module.encoder_q.fc.", "module.encoder_k.", "module.queue")),
    "openselfsup-moco": ("encoder_q.0.", "backbone.", ("encoder_q.1.", "encoder_k.", "queue", "head.")),
    "openselfsup-byol": ("online_net.0.", "backbone.", ("online_net.1.", "target_net.", "head.")),
    "openselfsup-simclr": ("backbone.", None, ("neck.", "head.")),
    "openselfsup": ("backbone.", None, ("neck.", "head.")),
}


def extract_backbone(data: dict, source_format: str) -> tuple[dict, list[str]]:
    """(backbone tensors under torchvision/timm-style names, dropped keys) by the format's explicit rule."""
    if source_format == "simclrv2-pytorch":
        resnet = data.get("resnet")
        if not isinstance(resnet, dict):
            raise CheckpointFormatError("format simclrv2-pytorch needs a top-level 'resnet' state dict")
        return {_simclrv2_name(key): value for key, value in resnet.items()}, [f"head.{k}" for k in data.get("head", {})]
    state = _state(data)
    if source_format == "plain":
        keys = list(state)
        if not all(isinstance(k, str) for k in keys):
            raise CheckpointFormatError(f"the state dict has non-text keys ({_show(k for k in keys if not isinstance(k, str))}); "
                                        f"not a model's state dict")
        if keys and all(isinstance(k, str) and k.startswith("module.") for k in keys):
            state = {k[len("module."):]: v for k, v in state.items()}
        return dict(state), []
    if source_format not in _RULES:
        raise UnknownNameError("source format", source_format, FORMATS)
    keep, alias, drop = _RULES[source_format]
    tensors, aliased, dropped, unknown = {}, {}, [], []
    for key, value in state.items():
        if not isinstance(key, str):
            unknown.append(repr(key))
        elif key.startswith(drop):
            dropped.append(key)
        elif key.startswith(keep):
            tensors[key[len(keep):]] = value
        elif alias and key.startswith(alias):
            aliased[key[len(alias):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointFormatError(f"{source_format}: keys outside the format's known parts: {_show(unknown)}; "
                                    f"not a {source_format} checkpoint? (--format {{{','.join(FORMATS)}}})")
    if not tensors and aliased:
        tensors = aliased  # someone kept only the alias: the same tensors
    elif aliased:
        differing = [k for k in set(tensors) | set(aliased)
                     if k not in tensors or k not in aliased or not _same(tensors[k], aliased[k])]
        if differing:
            raise CheckpointFormatError(
                f"{source_format}: ambiguous backbone — '{keep}*' and '{alias}*' should be the same module but differ "
                f"at {_show(differing)}; refusing to guess which one is the trained backbone")
    if not tensors:
        raise CheckpointFormatError(f"{source_format}: no '{keep}*' tensors: the backbone is missing")
    return tensors, dropped


def _same(a, b) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and torch.equal(a, b)


_SIMCLRV2_BLOCK = {"net.0": "conv1", "net.1.0": "bn1", "net.2": "conv2", "net.3.0": "bn2", "net.4": "conv3",
                   "net.5.0": "bn3", "projection.shortcut": "downsample.0", "projection.bn.0": "downsample.1"}


def _simclrv2_name(key: str) -> str:
    """SimCLRv2-Pytorch's ResNet (net.0 = stem, net.1-4 = stages) -> torchvision/timm names; sk1 has none."""
    module, _, field = key.rpartition(".")
    if module == "fc":
        return key
    stem = {"net.0.0": "conv1", "net.0.1.0": "bn1"}.get(module)
    if stem:
        return f"{stem}.{field}"
    match = re.fullmatch(r"net\.([1-4])\.blocks\.(\d+)\.(.+)", module)
    if match and match.group(3) in _SIMCLRV2_BLOCK:
        return f"layer{match.group(1)}.{match.group(2)}.{_SIMCLRV2_BLOCK[match.group(3)]}.{field}"
    raise CheckpointFormatError(f"simclrv2-pytorch: no ResNet name for {key!r}; only the 1x sk0 models map onto "
                                f"timm's ResNet (selective-kernel sk1 and 2x/3x widths have no timm equivalent)")


# torchvision mobilenet_v2 features.<i> -> timm mobilenetv2_100 blocks.<stage>.<index>
_MNV2_STAGE_DEPTHS = (1, 2, 3, 4, 3, 3, 1)
_MNV2_BLOCKS = {}
for _stage, _depth in enumerate(_MNV2_STAGE_DEPTHS):
    for _index in range(_depth):
        _MNV2_BLOCKS[len(_MNV2_BLOCKS) + 1] = (_stage, _index)
_MNV2_FIRST = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_MNV2_REST = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2", "conv.2": "conv_pwl",
              "conv.3": "bn3"}


def _torchvision_mobilenetv2_name(key: str) -> str | None:
    module, _, field = key.rpartition(".")
    if module == "classifier.1":
        return f"classifier.{field}"
    match = re.fullmatch(r"features\.(\d+)\.(.+)", module)
    if not match:
        return None
    index, part = int(match.group(1)), match.group(2)
    if index == 0:
        name = {"0": "conv_stem", "1": "bn1"}.get(part)
    elif index == 18:
        name = {"0": "conv_head", "1": "bn2"}.get(part)
    elif index in _MNV2_BLOCKS:
        stage, position = _MNV2_BLOCKS[index]
        inner = (_MNV2_FIRST if index == 1 else _MNV2_REST).get(part)
        name = f"blocks.{stage}.{position}.{inner}" if inner else None
    else:
        name = None
    return f"{name}.{field}" if name else None


# timm architecture family -> renaming of torchvision names (ResNets need none: the names agree)
_TORCHVISION_RENAMES = {"mobilenetv2_100": _torchvision_mobilenetv2_name}


def to_timm_names(tensors: dict, timm_arch: str, target_keys) -> dict:
    """Rename to timm's keys by an explicit per-architecture rule; unmappable or doubly-mapped keys are refused."""
    target_keys = set(target_keys)
    if set(tensors) <= target_keys:
        return dict(tensors)  # already timm's (or torchvision's identical) names
    rename = _TORCHVISION_RENAMES.get(timm_arch)
    if rename is None:
        return dict(tensors)  # the strict key check reports the mismatch by name
    mapped, unmapped = {}, []
    for key, value in tensors.items():
        target = key if key in target_keys else rename(key)
        if target is None:
            unmapped.append(key)
        elif target in mapped:
            raise CheckpointFormatError(f"ambiguous mapping: two source tensors map onto {target!r}; refusing")
        else:
            mapped[target] = value
    if unmapped:
        raise CheckpointFormatError(f"no {timm_arch} name for: {_show(unmapped)}; the architectures differ "
                                    f"(pick another --arch)")
    return mapped


# ---------------------------------------------------------------------------------------------- values
def conform(key: str, value, reference: torch.Tensor, source: str) -> torch.Tensor:
    """`value` as the model's dtype, by the stated rule; refuses what would change or corrupt weights."""
    if not isinstance(value, torch.Tensor):
        raise CheckpointFormatError(f"{source}: {key} is a {type(value).__name__}, not a tensor")
    if tuple(value.shape) != tuple(reference.shape):
        raise CheckpointFormatError(f"{source}: {key} has shape {tuple(value.shape)} but the architecture needs "
                                    f"{tuple(reference.shape)} (pick another --arch, or the file is another model)")
    if reference.dtype.is_floating_point:
        if not value.dtype.is_floating_point:
            raise CheckpointFormatError(f"{source}: {key} is {value.dtype} where float weights are expected; the "
                                        f"file does not hold weights under this name")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointFormatError(f"{source}: {key} contains NaN or inf values; the checkpoint is broken "
                                        f"(a diverged run?) and is refused")
        cast = value.to(reference.dtype)
        if value.dtype == torch.float64 and not torch.equal(cast.double(), value):
            raise CheckpointFormatError(f"{source}: {key} is float64 with values float32 cannot hold exactly; "
                                        f"refused rather than silently rounded (cast it yourself if that is intended)")
        return cast
    if value.dtype.is_floating_point or value.dtype == torch.bool or value.is_complex():
        raise CheckpointFormatError(f"{source}: {key} is {value.dtype} where {reference.dtype} is expected")
    return value.to(reference.dtype)


# ---------------------------------------------------------------------------------------------- convert
def _timm_model(timm_arch: str, num_classes: int, model_args):
    try:
        return create_on_meta(timm_arch, num_classes, model_args)
    except RuntimeError as error:
        if "Unknown model" not in str(error):
            raise
        import timm

        raise UnknownNameError("architecture", timm_arch, timm.list_models(),
                               hint="Use r18, r50, mnv2 or a timm architecture name (timm.list_models()).") from None


def check_output_path(output: str | os.PathLike) -> Path:
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise CheckpointFormatError(f"output {output} is a file; give a folder path that does not exist yet")
    if output.is_dir() and any(output.iterdir()):
        raise CheckpointFormatError(f"output {output} already exists and is not empty; choose a new folder or "
                                    f"delete it")
    return output


def convert(source: str | os.PathLike, output: str | os.PathLike, *, timm_arch: str, name: str,
            meta: dict | None = None, pretrained_cfg: dict | None = None, keep_classifier: bool | None = None,
            model_args: dict | None = None, source_format: str | None = None, preprocessing: str | None = None,
            source_url: str | None = None) -> Path:
    """Convert a foreign checkpoint file into a zoo checkpoint folder; returns the folder.

    preprocessing: a preset ('moco', 'simclr', 'torchvision', 'hpt:<domain>'); when omitted, the one the
    format implies, else `pretrained_cfg` overrides on the architecture's fields. One of the three must
    say what the source expects: timm's defaults for the architecture are never assumed.
    """
    from .presets import preset, pretrained_cfg_of

    output = check_output_path(output)
    if source_format is not None and source_format not in FORMATS:
        raise UnknownNameError("source format", source_format, FORMATS, hint=f"Known: {', '.join(FORMATS)}.")
    model = _timm_model(timm_arch, 0, model_args)
    data = read_pickle_safely(source)
    layout = source_format or detect_format(data)
    preprocessing = preprocessing or IMPLIED_PRESET.get(layout)
    if preprocessing is None and not pretrained_cfg:
        from .presets import preset_names

        raise CheckpointFormatError(
            f"{source}: the {layout!r} format does not say how inputs were preprocessed; state it with "
            f"--preprocessing {{{', '.join(preset_names()[:4])}, hpt:<domain>}} (moco: bilinear 256->224 ImageNet "
            f"mean/std; simclr: unnormalised [0,1]; hpt:<domain>: the HPT config's statistics)")
    preprocessing_record = preset(preprocessing) if preprocessing else None
    tensors, _dropped = extract_backbone(data, layout)
    classifier_keys = set(_timm_model(timm_arch, 1000, model_args).state_dict()) - set(model.state_dict())
    tensors = to_timm_names(tensors, timm_arch, set(model.state_dict()) | classifier_keys)
    present = classifier_keys & set(tensors)
    head_classes = 0
    if present and present != classifier_keys:
        raise CheckpointFormatError(f"{source}: a partial classifier ({_show(present)}; needs {_show(classifier_keys)})")
    if present and keep_classifier is False:
        tensors = {k: v for k, v in tensors.items() if k not in classifier_keys}
    elif present:
        weight = next(k for k in sorted(classifier_keys) if k.endswith("weight"))
        head_classes = int(tensors[weight].shape[0]) if isinstance(tensors[weight], torch.Tensor) else 0
        model = _timm_model(timm_arch, head_classes, model_args)
    target = model.state_dict()
    if set(tensors) != set(target):
        missing, unexpected = set(target) - set(tensors), set(tensors) - set(target)
        raise CheckpointFormatError(f"{source} ({layout}) does not fit {timm_arch}: "
                                    f"{describe_key_mismatch(missing, {str(k)[:80] for k in unexpected})}")
    mapped = {key: conform(key, tensors[key], reference, str(source)) for key, reference in target.items()}
    import timm

    cfg = {key: value for key, value in timm.get_pretrained_cfg(timm_arch).to_dict().items()
           if key in ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std", "first_conv",
                      "classifier", "pool_size")}
    cfg.update(pretrained_cfg or {})
    if preprocessing_record:
        cfg.update(pretrained_cfg_of(preprocessing_record))
    config = timm_config(timm_arch, head_classes, int(model.num_features), cfg, model_args)
    source_sha256 = sha256_file(source)
    source_record = {"file": os.path.basename(str(source)), "sha256": source_sha256, "layout": layout}
    if source_url:
        source_record["url"] = source_url
    meta = {"name": name, "source_checkpoint": source_record, **(meta or {})}
    if preprocessing_record:
        meta.setdefault("preprocessing", {"preset": preprocessing_record["preset"],
                                          "source": preprocessing_record["source"]})
    if "lineage" not in meta:  # where these weights came from, checkable by anyone holding the file
        meta["lineage"] = [{"role": "source", "name": source_url or os.path.basename(str(source)), "sha256": source_sha256,
                            "format": layout, "method": meta.get("method"), "domain": meta.get("domain"),
                            "steps": meta.get("steps")}]
    return write_checkpoint(output, mapped, config, meta)
