"""The Hub-dataset source for real: a small image-classification dataset (real Fashion-MNIST images as
PNGs, with a dataset card) published to the git mirror, served by olah on loopback, read through
`datasets.load_dataset` by `--data hf:<id>`, trained on, then read again offline from the cache."""
import hashlib
import json

import pytest

from tests.conftest import run_python
from zoo.publish import publish_to_mirror

REPO_ID = "zoo-tests/fashion-tiny"
TRAIN, TEST = 40, 20


@pytest.fixture(scope="session")
def dataset_commit(mirror_root, tmp_path_factory) -> str:
    from PIL import Image

    from training.offline_sets import load_offline

    folder = tmp_path_factory.mktemp("fashion-tiny")
    images, labels = load_offline("fashion_mnist", "test")
    for split, indices in (("train", range(TRAIN)), ("test", range(TRAIN, TRAIN + TEST))):
        for index in indices:
            target = folder / split / f"class{labels[index]}" / f"{index:05d}.png"
            target.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index]).save(target)
    (folder / "README.md").write_text("---\nlicense: mit\ntask_categories:\n- image-classification\n---\n"
                                      "# fashion-tiny\n60 Fashion-MNIST test images as PNG, for tests.\n")
    return publish_to_mirror(folder, mirror_root, REPO_ID, repo_type="dataset")


PROBE = """
import hashlib, json, sys
from training.data import open_source
spec = sys.argv[1] if len(sys.argv) > 1 else {spec!r}
out = {{}}
for split in ("train", "test"):
    images = open_source(spec, split)
    first = images.image(0)
    out[split] = dict(n=len(images), classes=images.num_classes, shape=list(first.shape),
                      labels=sorted(set(images.labels().tolist())),
                      pixels=sorted(hashlib.sha256(images.image(i).numpy().tobytes()).hexdigest()
                                    for i in range(len(images))))
print(json.dumps(out))
"""


def _env(tmp_path, **extra):
    home = tmp_path / "hf-home"
    return {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_DATASETS_CACHE": str(home / "datasets"),
            "OMP_NUM_THREADS": "1", **extra}


def _probe(spec, env):
    result = run_python(PROBE.format(spec=spec), env)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_hub_dataset_through_mirror_then_offline_from_cache(olah, dataset_commit, tmp_path):
    online = _probe(f"hf:{REPO_ID}", _env(tmp_path))
    assert online["train"]["n"] == TRAIN and online["test"]["n"] == TEST
    assert online["train"]["shape"] == [1, 28, 28]  # PNG mode L stays one channel
    assert online["train"]["classes"] >= 8 and set(online["train"]["labels"]) <= set(range(10))
    # the pixels are exactly the published images (PNG is lossless), whatever order the folder lists them in
    from training.offline_sets import load_offline
    images, _ = load_offline("fashion_mnist", "test")
    expected = sorted(hashlib.sha256(images[index].tobytes()).hexdigest() for index in range(TRAIN))
    assert online["train"]["pixels"] == expected
    pinned = _probe(f"hf:{REPO_ID}@{dataset_commit}", _env(tmp_path))
    assert pinned == online

    offline = _probe(f"hf:{REPO_ID}", _env(tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert offline == online


def test_pretrain_on_hub_dataset(olah, dataset_commit, tmp_path):
    code = f"""
from training.config import resolve
from training.engine import pretrain
from training import runfiles
config = resolve({{}}, dict(method="simclr", data="hf:{REPO_ID}@{dataset_commit}", domain="fashion_mnist",
                            arch="r18", image_size=32, batch_size=16, steps=3, proj_hidden=64, log_every=1,
                            progress=False, checkpoint_every=1000))
pretrain(config, {str(tmp_path / 'run')!r})
print([row["loss"] for row in runfiles.read_metrics({str(tmp_path / 'run')!r}) if "loss" in row])
"""
    result = run_python(code, _env(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert dataset_commit in saved  # the run records which revision of the data it trained on


def test_missing_hub_dataset_says_how_to_get_it(olah, tmp_path):
    code = """
from training.data import open_source, DataNotFoundError
try:
    open_source("hf:zoo-tests/no-such-dataset")
except DataNotFoundError as error:
    print("ERROR", error)
"""
    result = run_python(code, _env(tmp_path))
    assert "ERROR" in result.stdout, result.stderr[-2000:]
    assert "no-such-dataset" in result.stdout and "HF_ENDPOINT" in result.stdout

    offline = run_python(code, _env(tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    assert "ERROR" in offline.stdout and "HF_HUB_OFFLINE=1" in offline.stdout, offline.stderr[-2000:]
