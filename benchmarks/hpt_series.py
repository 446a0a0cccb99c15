"""The HPT reproduction's series, as data: the two bases, their networks and MoCo recipes, the ladders, the
evaluation protocol, and where every run, export and result lives. `hpt_repro.py` trains and measures from this,
`hpt_report.py` reads the results back without importing torch (the runner calls its report() after a run and
for --report; matplotlib and scipy load only when a report is made).
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
WORK = HERE / "_work" / "hpt2"
SUP_BASE = "sup-imagenet-mnv2"
SERIES = {
    "ssl": {"targets": ("animals", "digits"), "chain": {"digits": "animals"}, "source": "fashion_mnist"},
    "sup": {"targets": ("fashion_mnist", "animals"), "chain": {"fashion_mnist": "animals"}},
}

# MoCo v2 as in the study (T 0.2, MLP head 2048, blur), sized for a CPU: lr 0.03 at batch 256 scaled
# linearly, a 4096-key queue and key momentum 0.99, split-BN in 8 groups against BN leakage on one device.
MOCO = {"lr": 0.03, "lr_reference_batch": 256, "queue_size": 4096, "ema_momentum": 0.99, "temperature": 0.2,
        "proj_hidden": 2048, "bn_splits": 8, "augment": "moco"}
# The CIFAR-scale MoCo v2 recipe (training.config METHOD_DEFAULTS ("moco", "small"): T 0.1, MLP 512, wd 5e-4,
# no blur, lr 0.06 at batch 512), the one quality_fashion.py trains with; spelled out so the series does not
# move if the defaults do.
SMALL_MOCO = {"lr": 0.06, "lr_reference_batch": 512, "weight_decay": 5e-4, "queue_size": 4096, "ema_momentum": 0.99,
              "temperature": 0.1, "proj_hidden": 512, "bn_splits": 8, "augment": "moco_small"}

# The network, input and MoCo recipe of each series (every strategy of a series uses them). Round 2 measured
# that MoCo from scratch on MobileNetV2 collapses under every recipe tried at this scale (benchmarks/RESULTS.md,
# "Why Target fell below random init"): its queries all end up pointing one way and only the queue's age
# separates keys. The self-supervised series therefore runs on the one setting measured to learn from scratch
# here, quality_fashion's ResNet-18 (CIFAR stem, 1 gray channel, 28 px, batch 128), whose base is that run's
# MoCo recipe and budget (1132 steps). The supervised series keeps MobileNetV2 (the only supervised ImageNet
# network available offline) and round 1's recipe, so its Target shows the collapse and its HPT what
# continuing from a network that does tell images apart gives.
NETWORKS = {
    "ssl": {"arch": "r18c", "channels": 1, "resolution": 28, "crop_pct": None, "batch_size": 128,
            "moco": SMALL_MOCO, "base_steps": 1132,
            "target_ladder": (100, 300, 1000), "hpt_ladder": (50, 150, 500), "hptbn_steps": 150, "chain_steps": 150},
    "sup": {"arch": "mnv2", "channels": 3, "resolution": 64, "crop_pct": 1.0, "batch_size": 32, "moco": MOCO,
            "target_ladder": (100, 300, 1000, 3000), "hpt_ladder": (50, 150, 500, 1500, 5000), "hptbn_steps": 500,
            "chain_steps": 500},
}
ORDER = ("random", "random_bn", "base", "base_bn", "target", "hpt", "hptbn", "chain")

FULL = {
    "seeds": (0, 1, 2), "network": {},
    "knn_every": 250,  # the self-supervised base's kNN monitor (val split)
    "linear": {"train_images": 3000, "eval_images": 1000, "iterations": 1000, "lrs": (0.3, 3.0, 30.0)},
    # the study's fine-tune lr 0.01 (head x100) is for batch 512: scaled linearly to batch 32 (at 0.01 the
    # head's lr of 1.0 diverged in round 1)
    "semi": {"labels": 1000, "iterations": 150, "batch_size": 32, "lrs": (0.01 * 32 / 512,), "eval_images": 2000},
}
QUICK = {
    "seeds": (0, 1), "knn_every": 10,
    "network": {"resolution": 32, "batch_size": 16, "base_steps": 20, "target_ladder": (5, 10), "hpt_ladder": (3, 6),
                "hptbn_steps": 4, "chain_steps": 3},
    "linear": {"train_images": 300, "eval_images": 150, "iterations": 100, "lrs": (3.0,)},
    "semi": {"labels": 100, "iterations": 3, "batch_size": 16, "lrs": (0.01 * 16 / 512,), "eval_images": 150},
}


def network_of(series: str, protocol: dict) -> dict:
    return {**NETWORKS[series], **protocol["network"]}


def moco_overrides(network: dict, steps: int, seed: int, **extra) -> dict:
    sized = {"crop_pct": network["crop_pct"]} if network["crop_pct"] is not None else {}
    return {**network["moco"], "steps": steps, "batch_size": network["batch_size"],
            "image_size": network["resolution"], **sized, "progress": False, "checkpoint_every": min(steps, 250),
            "keep_checkpoints": 2, "seed": seed, "device": "cpu", "log_every": 25, **extra}


def ssl_base_dir(tag: str, arch: str) -> Path:
    return WORK / tag / ("ssl_base" if arch == "mnv2" else f"ssl_base_{arch}")  # round 2's first try: mnv2


def ssl_base_export(tag: str, arch: str, steps: int) -> Path:
    """Where the self-supervised base of `steps` MoCo steps is exported (zoo format)."""
    return ssl_base_dir(tag, arch) / f"moco-fashion_mnist-{arch}-{steps}"


def series_work(tag: str, series: str, arch: str, target: str) -> Path:
    """One (series, target)'s runs and exports, per network (round 2's first, MobileNetV2, ssl work stays apart);
    a strategy's export for a seed is `<this>/seed<seed>/<strategy>_<steps>`, its training run beside it in
    `<this>/seed<seed>/runs-<strategy>_<steps>`."""
    return WORK / tag / f"{series}-{arch}" / target


def results_path(tag: str, series: str, target: str) -> Path:
    return RESULTS / f"hpt_repro.{'' if tag == 'full' else tag + '.'}{series}.{target}.json"


def base_record_path(tag: str) -> Path:
    return RESULTS / f"hpt_repro.{'' if tag == 'full' else tag + '.'}ssl_base.json"


def base_knn_curve(tag: str) -> list:
    """The base run's kNN monitor; from the committed record when the run folder is gone (a new checkout)."""
    from training import runfiles

    run = ssl_base_dir(tag, NETWORKS["ssl"]["arch"]) / "run"
    if run.exists():
        return [(r["step"], r["knn_top1"]) for r in runfiles.read_metrics(run) if "knn_top1" in r]
    record = base_record_path(tag)
    return [tuple(p) for p in json.loads(record.read_text())["knn_top1"]] if record.exists() else []


def load_rows(tag: str) -> list[dict]:
    rows = []
    prefix = "hpt_repro." if tag == "full" else f"hpt_repro.{tag}."
    for series in SERIES:
        for path in sorted(RESULTS.glob(f"{prefix}{series}.*.json")):
            rows += json.loads(path.read_text())
    return rows
