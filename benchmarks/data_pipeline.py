"""Decode + MoCo v2 augmentation throughput on one CPU core: our prepared-data loader vs torchvision.

    OMP_NUM_THREADS=1 python benchmarks/data_pipeline.py [--per-size 6] [--rounds 3]

Images: real photographs (scikit-image's bundled ones) resized to the typical image size of each of the
16 HPT targets (RESISC 256 px ... VIPER 1920x1080; the X-ray sets grayscale) and saved as JPEG q90,
`--per-size` of each. Every pipeline yields MoCo's two 224-px views per image, batched by a DataLoader
with no worker processes and torch at 1 thread, so the figures are images/s per core:

    ours          prepared Arrow rows (training.prepare) -> training.encoded_views.EncodedViews
    tv_same_ops   torchvision ImageFolder + DataLoader, the same PIL operations (the study's PIL
                  GaussianBlur), full-resolution decode
    tv_v2_blur    torchvision ImageFolder + DataLoader, torchvision v2 transforms with v2.GaussianBlur
                  (kernel 23, 10% of the side), what a torchvision user writes
    prepared_v2   prepared Arrow rows decoded to uint8 tensors (ImageSet.image) + training.views'
                  view_transform: what the training engine runs today (EncodedViews is not wired in yet)

The headline is against tv_same_ops (identical augmentation operations: the difference is the data
format and decoding only as many pixels as the crops need). Throughput is images per CPU-second of
this one-threaded process, the pipelines taking turns batch by batch (the CPU is shared: time spent
waiting for a core is not charged). Last line: `data pipeline speedup vs torchvision ImageFolder: X.XXx`.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader, Dataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.encoded_views import EncodedViews  # noqa: E402
from training.views import InputSpec  # noqa: E402

# typical image size (width, height, gray) per HPT target
SIZES = {"resisc": (256, 256, False), "ucmerced": (256, 256, False), "xview": (512, 512, False),
         "bdd": (1280, 720, False), "viper": (1920, 1080, False), "chexpert": (390, 320, True),
         "chest_xray_kids": (1500, 1200, True), "flowers": (500, 667, False), "coco_2014": (640, 480, False),
         "pascal": (500, 375, False), "domain_net_clipart": (400, 400, False),
         "domain_net_infograph": (1000, 800, False), "domain_net_painting": (600, 450, False),
         "domain_net_quickdraw": (256, 256, False), "domain_net_real": (500, 400, False),
         "domain_net_sketch": (600, 600, False)}
H100_R50_MOCO_IMG_S = 3000
SPEC = InputSpec(3, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def make_images(folder: Path, per_size: int) -> list[Path]:
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.hubble_deep_field(),
              data.immunohistochemistry(), data.retina()]
    paths = []
    for k, (domain, (width, height, gray)) in enumerate(SIZES.items()):
        for n in range(per_size):
            photo = photos[(k + n) % len(photos)]
            side = min(photo.shape[:2])
            crop = photo[(n * 17) % (photo.shape[0] - side + 1):][:side, :side]
            image = Image.fromarray(crop).resize((width, height), Image.BICUBIC)
            path = folder / domain / f"{domain}_{n:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            (image.convert("L") if gray else image).save(path, "JPEG", quality=90)
            paths.append(path)
    return paths


def prepare_arrow(paths: list[Path], root: Path, out: Path):
    """The images as a prepared dataset (training.prepare's writer, so the real on-disk format)."""
    import warnings
    from types import SimpleNamespace

    from training.prepare.core import Item, Plan, write_prepared

    classes = sorted({p.parent.name for p in paths})
    items = [Item("train", str(p.relative_to(root)), (lambda p=p: p.read_bytes()), classes.index(p.parent.name))
             for p in paths]
    items += [Item(split, items[0].source, items[0].read, 0) for split in ("val", "test")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return write_prepared(Plan(items, classes, False), SimpleNamespace(name="benchmark"), root, out)


class PreparedTwoViews(Dataset):
    def __init__(self, folder: Path):
        from datasets import Dataset as ArrowDataset

        from training.data import EncodedColumn

        self.column = EncodedColumn(ArrowDataset.from_file(str(folder / "train" / "data-00000-of-00001.arrow")))
        self.labels = np.asarray(ArrowDataset.from_file(str(folder / "train" / "data-00000-of-00001.arrow"))["label"])
        self.views = EncodedViews(SPEC, "moco")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        first, second = self.views(self.column.encoded(index))
        return first, second, int(self.labels[index])


class PreparedTensorViews(Dataset):
    """The engine's current CPU path: decoded uint8 tensor -> views.view_transform (v2 ops on tensors)."""

    def __init__(self, folder: Path):
        from datasets import Dataset as ArrowDataset

        from training.data import EncodedColumn
        from training.views import view_transform

        dataset = ArrowDataset.from_file(str(folder / "train" / "data-00000-of-00001.arrow"))
        self.column, self.labels = EncodedColumn(dataset), np.asarray(dataset["label"])
        self.transform = view_transform(SPEC, "moco")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        image = self.column(index)
        return self.transform(image), self.transform(image), int(self.labels[index])


class TwoCrops:
    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image):
        return self.transform(image), self.transform(image)


class PilBlur:
    """The study's blur (OpenSelfSup / MoCo v2: PIL GaussianBlur, sigma 0.1-2)."""

    def __call__(self, image):
        return image.filter(ImageFilter.GaussianBlur(radius=0.1 + 1.9 * float(torch.rand(()))))


def torchvision_pipelines() -> dict:
    from torchvision.transforms import v2

    head = [v2.RandomResizedCrop(224, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), v2.RandomGrayscale(p=0.2)]
    tail = [v2.RandomHorizontalFlip(), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(SPEC.mean), list(SPEC.std))]
    return {"tv_same_ops": v2.Compose(head + [v2.RandomApply([PilBlur()], p=0.5)] + tail),
            "tv_v2_blur": v2.Compose(head + [v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5)] + tail)}


def throughput(pipelines: dict, batch_size: int, rounds: int) -> dict:
    """Images per CPU-second for each pipeline. The pipelines take turns batch by batch (lockstep), and
    each batch is charged its process CPU time (one thread, no workers): on a shared machine, waiting for
    a core is not counted and load swings hit every pipeline alike."""
    cpu = {name: 0.0 for name in pipelines}
    images = {name: 0 for name in pipelines}
    for round_index in range(rounds):
        iterators = {name: iter(DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=0,
                                           generator=torch.Generator().manual_seed(round_index)))
                     for name, dataset in pipelines.items()}
        finished = False
        while not finished:
            for name, iterator in iterators.items():
                start = time.process_time()
                batch = next(iterator, None)
                if batch is None:
                    finished = True
                    continue
                cpu[name] += time.process_time() - start
                views = batch[0]  # ours: (view1, view2, label); ImageFolder: ((view1, view2), label)
                images[name] += (views[0] if isinstance(views, (list, tuple)) else views).shape[0]
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {images[n] / cpu[n]:.1f}" for n in pipelines),
              flush=True)
    return {name: images[name] / cpu[name] for name in pipelines}


def arrow_vs_parquet(folder: Path, scratch: Path) -> tuple[float, float]:
    """Seconds to get every image's bytes: memory-mapped Arrow slices vs reading the same rows from Parquet."""
    import pyarrow.parquet as pq
    from datasets import Dataset as ArrowDataset

    from training.data import EncodedColumn

    arrow_file = folder / "train" / "data-00000-of-00001.arrow"
    dataset = ArrowDataset.from_file(str(arrow_file))
    parquet_file = scratch / "train.parquet"
    pq.write_table(dataset.data.table, parquet_file)
    start = time.perf_counter()
    column = EncodedColumn(ArrowDataset.from_file(str(arrow_file)))
    arrow_total = sum(len(column.encoded(i)) for i in range(len(dataset)))
    arrow_seconds = time.perf_counter() - start
    start = time.perf_counter()
    table = pq.read_table(parquet_file, columns=["image"])
    parquet_total = sum(len(v["bytes"]) for v in table.column("image").to_pylist())
    parquet_seconds = time.perf_counter() - start
    assert arrow_total == parquet_total
    return arrow_seconds, parquet_seconds


def main(argv=None) -> int:
    from torchvision.datasets import ImageFolder

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-size", type=int, default=6, help="images per typical size (16 sizes)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        paths = make_images(scratch / "images", args.per_size)
        megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths) / len(paths) / 1e6
        prepared = prepare_arrow(paths, scratch / "images", scratch / "prepared")
        pipelines = {"ours": PreparedTwoViews(prepared)}
        for name, transform in torchvision_pipelines().items():
            pipelines[name] = ImageFolder(str(scratch / "images"), transform=TwoCrops(transform))
        pipelines["prepared_v2"] = PreparedTensorViews(prepared)
        best = throughput(pipelines, args.batch_size, args.rounds)
        arrow_seconds, parquet_seconds = arrow_vs_parquet(prepared, scratch)
    print(f"\n{len(paths)} JPEGs, mean {megapixels:.2f} MP, 16 typical HPT-target sizes; two 224-px MoCo v2 views "
          f"per image; DataLoader num_workers=0, torch threads {torch.get_num_threads()}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print(f"{'pipeline':<14}{'img/s per core':>16}{'CPU ms / img':>14}")
    for name, rate in best.items():
        print(f"{name:<14}{rate:>16.1f}{1000 / rate:>14.2f}")
    print(f"reading every image's bytes: Arrow (memory-mapped) {arrow_seconds * 1000:.1f} ms, "
          f"Parquet {parquet_seconds * 1000:.1f} ms")
    cores = H100_R50_MOCO_IMG_S / best["ours"]
    print(f"cores to feed one H100 (ResNet-50 MoCo v2 at {H100_R50_MOCO_IMG_S} img/s): ours {cores:.0f}, "
          f"torchvision same ops {H100_R50_MOCO_IMG_S / best['tv_same_ops']:.0f}, "
          f"torchvision v2 blur {H100_R50_MOCO_IMG_S / best['tv_v2_blur']:.0f}")
    print(f"speedup vs torchvision v2 transforms (v2.GaussianBlur): {best['ours'] / best['tv_v2_blur']:.2f}x")
    print(f"data pipeline speedup vs torchvision ImageFolder: {best['ours'] / best['tv_same_ops']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
