"""zoo.load by name through a real Hub-compatible server (olah on loopback) and the HF cache."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import zoo
from zoo.catalog import resolve
from zoo.errors import IntegrityError, NotCachedError, UnknownNameError, UnknownVariantError

from .conftest import run_python

NAME = "sup-imagenet-mnv2"
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _blob(cache: Path, filename: str = "model.safetensors") -> Path:
    entry, _ = resolve(NAME)
    snapshot = cache / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / entry.revision / filename
    return Path(os.path.realpath(snapshot))


def test_real_mobilenet_same_logits_and_right_classes(olah, hub_cache, torchvision_mnv2):
    from skimage import data

    model = zoo.load(NAME, num_classes=None)
    assert not any(t.is_meta for t in model.state_dict().values())
    x = torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), torchvision_mnv2(x))
    preprocess = zoo.transforms(NAME)
    with torch.no_grad():
        cat = model(preprocess(data.chelsea()).unsqueeze(0)).argmax().item()
        coffee = model(preprocess(data.coffee()).unsqueeze(0)).argmax().item()
    assert cat in CAT_CLASSES
    assert coffee == ESPRESSO
    # the blob huggingface_hub cached is named by the sha256 the catalog pins (LFS ETag)
    assert _blob(hub_cache).name == resolve(NAME)[0].file("model.safetensors")["sha256"]


def test_backbone_by_default_and_fresh_head_on_request(olah, hub_cache):
    backbone = zoo.load(NAME)
    assert backbone(torch.zeros(1, 3, 224, 224)).shape == (1, 1280)
    head = zoo.load(NAME, num_classes=7, dtype=torch.float64)
    assert head(torch.zeros(1, 3, 224, 224, dtype=torch.float64)).shape == (1, 7)


def test_bn_variant_changes_only_bn_statistics(olah, hub_cache):
    from safetensors.torch import load_file

    from zoo.fetch import fetch

    base = zoo.load(NAME).state_dict()
    variant = zoo.load(NAME, bn="animals").state_dict()
    by_name = zoo.load("base-animals-mnv2").state_dict()
    overlay = load_file(fetch(resolve(NAME)[0], "bn/animals.safetensors"))
    assert overlay and all(key.endswith(("running_mean", "running_var", "num_batches_tracked")) for key in overlay)
    for key, value in variant.items():
        assert torch.equal(value, by_name[key])
        if key in overlay:
            assert torch.equal(value, overlay[key])
        else:
            assert torch.equal(value, base[key]), key
    assert not torch.equal(variant["bn1.running_mean"], base["bn1.running_mean"])


def test_unknown_names_and_variants_get_suggestions(olah, hub_cache):
    with pytest.raises(UnknownNameError, match="sup-imagenet-mnv2"):
        zoo.load("sup-imagenet-mnv3")
    with pytest.raises(UnknownNameError, match="chexpert"):
        zoo.load("hpt-chexpret-r50")
    with pytest.raises(zoo.NotPublishedError, match="python -m training hpt --strategy hpt --target chexpert"):
        zoo.load("hpt-chexpert-r50")
    with pytest.raises(UnknownVariantError, match="available: animals"):
        zoo.load(NAME, bn="chexpert")
    with pytest.raises(UnknownVariantError, match="Did you mean animals"):
        zoo.load(NAME, bn="animal")


def test_offline_empty_cache_says_how_to_prefetch(hub_cache, offline):
    with pytest.raises(NotCachedError, match=f"zoo download {NAME}"):
        zoo.load(NAME)


def test_offline_after_prefetch_and_hand_filled_cache(olah, hub_cache, monkeypatch, tmp_path, torchvision_mnv2):
    from huggingface_hub import constants

    assert subprocess.run([sys.executable, "-m", "zoo", "download", NAME], env=os.environ.copy(),
                          capture_output=True, text=True).returncode == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    variant, reference_bn = zoo.load(NAME, bn="animals"), torchvision_mnv2.features[0][1]
    assert torch.equal(variant.conv_stem.weight, torchvision_mnv2.features[0][0].weight)
    assert variant.bn1.running_mean.shape == reference_bn.running_mean.shape
    assert not torch.equal(variant.bn1.running_mean, reference_bn.running_mean)  # the animals statistics
    assert "sup-imagenet-mnv2" in zoo.card(NAME)
    # a cache filled by hand (refs/main + snapshots/<commit>/files), as an air-gapped site would
    entry, _ = resolve(NAME)
    manual = tmp_path / "manual-cache"
    snapshot = manual / f"models--{entry.repo_id.replace('/', '--')}" / "snapshots" / entry.revision
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(entry.revision)
    (snapshot / "model.safetensors").write_bytes(_blob(hub_cache).read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(manual))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(zoo.load(NAME, num_classes=None)(x), torchvision_mnv2(x))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_blob_is_refetched_once(olah, hub_cache, damage):
    zoo.load(NAME)
    blob = _blob(hub_cache)
    data = bytearray(blob.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) // 3]
    blob.write_bytes(bytes(data))
    zoo.load(NAME)  # detected (stamp no longer matches -> full hash), re-fetched, verified
    from zoo.integrity import sha256_file

    assert sha256_file(_blob(hub_cache)) == resolve(NAME)[0].file("model.safetensors")["sha256"]


def test_corrupt_blob_offline_is_a_clear_error(olah, hub_cache, monkeypatch):
    from huggingface_hub import constants

    zoo.load(NAME)
    blob = _blob(hub_cache)
    with open(blob, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\0" * 64)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(IntegrityError, match="corrupt"):
        zoo.load(NAME)


def test_server_with_wrong_bytes_is_refused(olah, hub_cache, tmp_path, monkeypatch):
    import json

    entry, _ = resolve(NAME)
    data = json.loads(json.dumps(entry.data))
    data["files"]["model.safetensors"]["sha256"] = "0" * 64  # what the catalog says != what is served
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"models": {"tampered-imagenet-mnv2": data}}))
    monkeypatch.setenv("ZOO_CATALOG", str(catalog))
    with pytest.raises(IntegrityError, match="even after a fresh download"):
        zoo.load("tampered-imagenet-mnv2")


def test_sigkilled_download_leaves_nothing_trusted(olah, hub_cache, torchvision_mnv2):
    """Kill a download mid-transfer; a later load must verify from scratch and succeed."""
    child = subprocess.Popen([sys.executable, "-m", "zoo", "download", NAME], env=os.environ.copy(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    blobs = hub_cache / f"models--{resolve(NAME)[0].repo_id.replace('/', '--')}" / "blobs"
    deadline = time.monotonic() + 120
    partial = None
    while time.monotonic() < deadline and child.poll() is None and partial is None:
        if blobs.exists():
            partial = next((p for p in blobs.iterdir() if p.name.endswith(".incomplete")), None)
        time.sleep(0.001)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert partial is not None and child.returncode == -signal.SIGKILL, "the download was not caught mid-transfer"

    stamps = Path(os.environ["ZOO_HOME"]) / "verified"
    weights_sha = resolve(NAME)[0].file("model.safetensors")["sha256"]
    trusted = list(stamps.glob(f"{weights_sha}-*")) if stamps.exists() else []
    blob = blobs / weights_sha
    # a stamp exists only if the full file was hashed and matched
    assert not trusted or (blob.exists() and blob.stat().st_size == resolve(NAME)[0].file("model.safetensors")["size"])
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(zoo.load(NAME, num_classes=None)(x), torchvision_mnv2(x))
    from zoo.integrity import sha256_file

    assert sha256_file(_blob(hub_cache)) == weights_sha


def test_four_processes_load_the_same_name_at_once(olah, hub_cache):
    code = ("import zoo, torch, hashlib\n"
            "m = zoo.load('sup-imagenet-mnv2', bn='animals')\n"
            "print(hashlib.sha256(b''.join(t.numpy().tobytes() for t in m.state_dict().values())).hexdigest())\n")
    children = [subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [child.communicate(timeout=600) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0, 0], [err[-2000:] for _, err in outputs]
    assert len({out.strip() for out, _ in outputs}) == 1


def test_cli_errors_exit_nonzero_with_message(hub_cache):
    result = run_python("import sys; from zoo.cli import main; sys.exit(main(['info', 'hpt-chexpret-r50']))")
    assert result.returncode == 2
    assert "did you mean 'chexpert'" in result.stderr
    result = run_python("import sys; from zoo.cli import main; sys.exit(main(['list', '--json']))")
    assert result.returncode == 0 and '"sup-imagenet-mnv2"' in result.stdout
    sources = {row["name"]: row["source"] for row in json.loads(result.stdout)}
    assert sources["sup-imagenet-mnv2"] == "hpt-zoo/sup-imagenet-mnv2"  # a Hub repo
    assert sources["moco-imagenet-r50"] == "upstream file (dl.fbaipublicfiles.com), converted on first use"


def test_torch_hub_entry_points(olah, hub_cache):
    model = torch.hub.load(str(Path(__file__).resolve().parents[1]), "sup_imagenet_mnv2", source="local")
    assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1280)
    generic = torch.hub.load(str(Path(__file__).resolve().parents[1]), "load", "base-animals-mnv2", source="local")
    assert torch.equal(generic.bn1.running_mean, zoo.load(NAME, bn="animals").bn1.running_mean)


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative imports made absolute)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "zoo." * (node.level > 0) + (node.module or "")
            found.add(base.rstrip("."))
            found |= {f"{base}.{alias.name}".replace("zoo..", "zoo.") for alias in node.names if node.level}
    return found


def test_zoo_never_imports_training_and_the_bn_checkpoint_cards_circle_is_gone():
    package = Path(zoo.__file__).parent
    graph = {f"zoo.{p.stem}": {m for m in _imports(p) if m.startswith("zoo.")} for p in package.glob("*.py")}
    for module, path in ((m, package / f"{m[4:]}.py") for m in graph):
        assert not any(m == "training" or m.startswith("training.") for m in _imports(path)), module
    # what bn, checkpoint, cards and catalog reach must never lead back to the loader (was bn->checkpoint->cards->loader)
    for start in ("zoo.bn", "zoo.checkpoint", "zoo.cards", "zoo.catalog", "zoo.publish", "zoo.mirror"):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt in graph and nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        assert "zoo.loader" not in seen and start not in seen, (start, sorted(seen))


def test_after_the_quickstart_a_plain_python_loads_from_the_primed_cache_without_settings(olah, hub_cache, tmp_path):
    """What zoo-demo leaves: the files in the standard HF cache; then no HF_ENDPOINT, no server, no env."""
    primed = subprocess.run([sys.executable, "-m", "zoo", "download", NAME], env=os.environ.copy(),
                            capture_output=True, text=True)
    assert primed.returncode == 0, primed.stderr[-2000:]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_ENDPOINT", "HF_HUB_OFFLINE", "ZOO_CATALOG"))}
    code = ("import time, zoo\nstart = time.perf_counter()\nm = zoo.load('sup-imagenet-mnv2')\n"
            "v = zoo.load('base-animals-mnv2')\nc = zoo.card('base-animals-mnv2')\n"
            "print(type(m).__name__, round(time.perf_counter() - start, 2), c.splitlines()[0])\n")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("EfficientNet") and result.stdout.strip().endswith("---")  # timm's MobileNetV2 class
