"""The main job on the embedded real default (``zoo-demo``, or ``python -m training.demo``).

1. import torchvision's real ImageNet MobileNetV2 into the zoo format (deterministic),
2. publish it to a git mirror and serve it with olah on loopback (a real Hub-compatible server),
3. check that the published commit is the one the packaged catalog pins,
4. ``zoo.load("sup-imagenet-mnv2")`` by name through huggingface_hub, verified, and classify real
   photos bundled with scikit-image,
5. load the same trunk with its ``animals`` BN-statistic variant and compare kNN accuracy of
   frozen features on the real animal silhouettes,
6. train HPT live (MoCo v2 continued from the ImageNet base on the silhouettes, a few minutes on
   CPU), export it, publish it to the mirror, load it back by name, and compare Base vs Base-BN
   vs HPT by a quick linear probe.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

PHOTOS = {"chelsea": "a cat class", "coffee": "espresso", "astronaut": "(a person: not an ImageNet class)"}


def animals_tensors(split: str, limit: int | None = None, resolution: int = 96):
    """Animal silhouettes as normalised 3-channel tensors at `resolution` (ImageNet statistics)."""
    import torch
    import torch.nn.functional as F

    from training.offline_sets import load_animals
    from zoo.domains import IMAGENET_MEAN, IMAGENET_STD

    images, labels = load_animals(split)
    if limit:
        images, labels = images[:limit], labels[:limit]
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    x = F.interpolate(x, size=resolution, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels)


def make_animals_overlay(checkpoint_dir: str, output: str) -> None:
    """Maintainer step: recalibrate the trunk's BN statistics on the animals train split."""
    import zoo
    from zoo.checkpoint import META, read_json
    from zoo.defaults import OVERLAY_RESOLUTION

    model = zoo.load(checkpoint_dir)
    images, _ = animals_tensors("train", resolution=OVERLAY_RESOLUTION)
    zoo.recalibrate_bn(model, images.split(256))
    zoo.extract_bn(model, output, trunk_sha256=read_json(Path(checkpoint_dir) / META)["trunk_sha256"],
                   domain="animals")


def knn_accuracy(model, train, test, k: int = 20) -> float:
    """Cosine kNN top-1 of frozen features (a quick, protocol-free look; see training.evaluate)."""
    import torch

    with torch.no_grad():
        bank = torch.nn.functional.normalize(torch.cat([model(b) for b in train[0].split(256)]), dim=1)
        query = torch.nn.functional.normalize(torch.cat([model(b) for b in test[0].split(256)]), dim=1)
    neighbours = (query @ bank.T).topk(k, dim=1).indices
    votes = torch.nn.functional.one_hot(train[1][neighbours], 10).sum(1)
    return (votes.argmax(1) == test[1]).float().mean().item()


def classify_photos(model, preprocess) -> list[tuple[str, str, float]]:
    import torch
    from skimage import data
    from timm.data import ImageNetInfo

    labels = ImageNetInfo()
    rows = []
    for photo in PHOTOS:
        image = getattr(data, photo)()
        with torch.no_grad():
            probabilities = model(preprocess(image).unsqueeze(0)).softmax(1)[0]
        top = probabilities.argmax().item()
        rows.append((photo, labels.index_to_description(top), probabilities[top].item()))
    return rows


def client() -> dict:
    """Steps 2-4, in a process whose HF_ENDPOINT points at the mirror; files go to the user's own HF cache."""
    import zoo
    from zoo.catalog import resolve
    from zoo.fetch import fetch

    start = time.perf_counter()
    model = zoo.load("sup-imagenet-mnv2", num_classes=None)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    model = zoo.load("sup-imagenet-mnv2", num_classes=None)
    warm = time.perf_counter() - start
    entry, _ = resolve("sup-imagenet-mnv2")
    cached = [fetch(entry, filename) for filename in sorted(entry.files)]  # every file: cards and BN variants too
    print(f"[2/6] zoo.load('sup-imagenet-mnv2') through olah at {os.environ.get('HF_ENDPOINT')}: first {cold:.2f} s "
          f"(download + sha256 unless already cached), warm {warm * 1000:.0f} ms; its {len(cached)} files are "
          f"verified in your Hugging Face cache ({Path(cached[0]).parents[3]})", flush=True)
    preprocess = zoo.transforms("sup-imagenet-mnv2")
    results = {"cold_s": cold, "warm_s": warm, "photos": {}}
    print("[3/6] real photos from scikit-image, classified by the loaded model:")
    for photo, label, probability in classify_photos(model, preprocess):
        results["photos"][photo] = label
        print(f"      {photo:10s} -> {label} ({probability:.1%})   expected: {PHOTOS[photo]}")
    backbone = zoo.load("sup-imagenet-mnv2")
    variant = zoo.load("sup-imagenet-mnv2", bn="animals")
    train, test = animals_tensors("train", 2000), animals_tensors("test", 1000)
    plain, recalibrated = knn_accuracy(backbone, train, test), knn_accuracy(variant, train, test)
    results.update(knn_imagenet_bn=plain, knn_animals_bn=recalibrated)
    print(f"[4/6] animal silhouettes, kNN (k=20) on frozen features, 2000 train / 1000 test at 96 px:\n"
          f"      ImageNet BN statistics {plain:.1%}  vs  bn='animals' (recalibrated) {recalibrated:.1%}", flush=True)
    results.update(hpt_live(Path(os.environ["ZOO_DEMO_WORKDIR"])))
    return results


# A CPU-sized HPT run: MoCo v2 continued from the ImageNet base on the animal silhouettes at 64 px.
DEMO_HPT = {"steps": 100, "batch_size": 32, "lr": 0.03, "lr_reference_batch": 256, "queue_size": 1024,
            "ema_momentum": 0.99, "temperature": 0.2, "proj_hidden": 2048, "bn_splits": 8, "image_size": 64,
            "crop_pct": 1.0, "augment": "moco", "progress": False, "checkpoint_every": 100, "seed": 0}


def hpt_live(workdir: Path) -> dict:
    """Steps 5-6: train HPT live, publish it, load it back by name, compare by a quick linear probe."""
    import zoo
    from training import hpt
    from training.data import open_source
    from training.evaluate import linear_eval
    from training.views import input_spec

    name = "hpt-animals-mnv2"
    exported = workdir / "runs" / name
    start = time.perf_counter()
    if not (exported / "zoo.json").exists():
        hpt.run(hpt.recipe("hpt", "animals", "mnv2", base="sup-imagenet-mnv2"), exported, overrides=DEMO_HPT)
    base_bn = workdir / "runs" / "base-animals-mnv2-64px"
    if not (base_bn / "zoo.json").exists():
        hpt.run_base("animals", "sup-imagenet-mnv2", base_bn, image_size=64, crop_pct=1.0)
    trained = time.perf_counter() - start
    from zoo.catalog import user_catalog_path
    from zoo.publish import publish

    catalog = user_catalog_path()  # this machine's catalog: the name keeps working in the user's own code
    repo_id = f"local/{name}"
    commit = publish(exported, repo_id, mirror=os.environ["ZOO_DEMO_MIRROR"], catalog=catalog)["revision"]
    zoo.load(name)  # by name through the mirror: now verified in the user's cache as well
    lineage = " -> ".join(f"{s['name']} ({s['role']})" for s in zoo.info(name)["lineage"])
    print(f"[5/6] HPT: {DEMO_HPT['steps']} MoCo v2 steps from the ImageNet base on animals at 64 px "
          f"({trained:.0f} s with Base-BN), exported, published as {repo_id}@{commit[:12]}, loaded back by name:\n"
          f"      zoo.info({name!r}) lineage: {lineage}; pinned in {catalog}", flush=True)
    splits = {s: open_source("animals", s, "animals") for s in ("train", "val", "test")}
    spec = input_spec(splits["train"].domain, base_cfg=zoo.info("sup-imagenet-mnv2")["pretrained_cfg"],
                      image_size=64, crop_pct=1.0)
    scores = {}
    for label, model in (("Base", zoo.load("sup-imagenet-mnv2")), ("Base-BN", zoo.load(base_bn)),
                         ("HPT", zoo.load(name))):
        record = linear_eval(model, splits["train"], splits["val"], splits["test"], spec, "animals",
                             train_images=2000, eval_images=1000, iterations=500, lrs=(0.3, 3.0))
        scores[label] = record["value"]
    print("[6/6] quick linear probe on animals (frozen features, 2000 train / 1000 val / 1000 test, lr chosen on "
          "val):\n      " + "   ".join(f"{k} {v:.1%}" for k, v in scores.items()))
    return {"linear_probe": scores}


def run(workdir: Path) -> int:
    import subprocess

    from zoo.defaults import prepare_mirror
    from zoo.mirror import serve

    mirror_root = workdir / "mirror"
    commit = prepare_mirror(mirror_root)
    print(f"[1/6] imported the real ImageNet MobileNetV2 and published it to {mirror_root} at {commit[:12]} "
          f"(= the catalog's pinned revision)", flush=True)
    with serve(mirror_root) as endpoint:
        # the user's own HF cache (HF_HOME or ~/.cache/huggingface): what the demo loads stays usable afterwards
        env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_DISABLE_XET": "1",
               "ZOO_DEMO_WORKDIR": str(workdir), "ZOO_DEMO_MIRROR": str(mirror_root)}
        env.pop("HF_HUB_OFFLINE", None)
        code = subprocess.run([sys.executable, "-m", "training.demo", "--client"], env=env).returncode
    if code == 0:
        print(f"done. The verified files are in your Hugging Face cache, so in your own code and shell, with no "
              f"settings and no server, `zoo.load('sup-imagenet-mnv2')` and `zoo.load('hpt-animals-mnv2')` now work "
              f"(offline too). To serve the mirror again (new machines, other caches): zoo serve {mirror_root}",
              flush=True)
    return code


MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"


def republish(catalog_path: Path) -> None:
    """Maintainer step: rebuild the default checkpoint (and overlay) and pin it in the catalog."""
    from zoo.defaults import NAME, PUBLISHED, REPO_ID, build_checkpoint
    from zoo.publish import publish

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        overlay = PUBLISHED / "bn" / "animals.safetensors"
        if not overlay.exists():
            trunk_only = build_checkpoint(scratch / "trunk")
            overlay.parent.mkdir(parents=True, exist_ok=True)
            make_animals_overlay(str(trunk_only), str(overlay))
        checkpoint = build_checkpoint(scratch / NAME)
        result = publish(checkpoint, REPO_ID, mirror=scratch / "mirror", catalog=catalog_path, base_for="mnv2",
                         cards=MODEL_CARDS, keep_history=False)
    print(f"pinned {NAME} at {result['revision']} in {catalog_path}; cards {', '.join(result['cards'])}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="zoo-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".zoo-demo", help="where the demo's mirror and training runs go")
    parser.add_argument("--republish", action="store_true", help="maintainers: rebuild and pin the catalog entry")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.republish:
        from zoo.catalog import PACKAGED
        republish(PACKAGED)
        return 0
    if args.client:
        client()
        return 0
    return run(Path(args.workdir).resolve())


if __name__ == "__main__":
    sys.exit(main())
