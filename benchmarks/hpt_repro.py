"""A real, small-scale reproduction of the HPT study's comparisons on a CPU, round 2: two kinds of
base, log-scale ladders, three seeds per point.

Series (the study ran both kinds of base):
- ``ssl``: a self-supervised base trained here: MoCo v2 from scratch on Fashion-MNIST (50k images,
  the largest offline set, so it plays ImageNet's part), long enough for its kNN curve to flatten;
  targets are the two other offline sets, the animal silhouettes (6.8k train) and scikit-learn's
  digits (1.3k train: HPT's small-target case). Chain: Fashion -> animals -> digits. Network:
  ResNet-18 with the 3x3 stem, one gray channel, 28 px, the CIFAR-scale MoCo recipe at batch 128
  (MoCo from scratch on MobileNetV2 collapses at this scale: NETWORKS below, benchmarks/RESULTS.md).
- ``sup``: torchvision's supervised ImageNet MobileNetV2 through the zoo (`sup-imagenet-mnv2`);
  targets Fashion-MNIST and animals, chain ImageNet -> animals -> Fashion (round 1's setting): gray
  images upsampled to 64 px (a 2x2 final feature map) and replicated to RGB, batch 32.

Each checkpoint is evaluated with the preprocessing it was trained with (its own
mean/std; round 1 used the ImageNet base's for every strategy, which put Target below random:
benchmarks/target_ablation.py). Strategies per target: random init (as built: BN running statistics
at their identity init), random init with BN statistics estimated on the target (Random-BN: the
function MoCo training starts from, and the fair floor for Target), Base, Base-BN (BN statistics
recalibrated), Target (MoCo v2 from scratch; one run per seed whose cosine schedule spans the top
rung, exported at every rung), HPT (one run per rung, each with its own schedule), HPT-BN, one
chain. Evaluations: the study's linear probe (frozen features, lr grid {0.3, 3, 30},
validation-selected, test top-1) and the 1000-label fine-tune, with seeds 0, 1, 2 (training seed,
probe and fine-tune seeds; the Base strategies vary by their evaluation seeds only).

    python benchmarks/hpt_repro.py                 # everything, in priority order; resumable
    python benchmarks/hpt_repro.py --series ssl --seeds 0     # a part
    python benchmarks/hpt_repro.py --series ssl --part from-scratch   # what needs no ssl base (Target, random)
    python benchmarks/hpt_repro.py --report        # tables + plot from the JSON only (also into RESULTS.md)
    python benchmarks/hpt_repro.py --quick --series ssl --targets digits   # minutes: a smoke check

Work (runs, exported checkpoints) lives in benchmarks/_work/hpt2/ (ignored by git); results in
benchmarks/results/hpt_repro.<series>.<target>.json. Every finished point is skipped on a rerun and
every training run resumes from its last checkpoint, so the same command continues where it stopped. A new
checkout has no _work: the ssl base is then retrained from its recipe and must match the sha256 recorded in
benchmarks/results/hpt_repro.ssl_base.json (it did, bit for bit, on 2026-11-26), and a strategy is retrained
only for the points still missing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
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


# ------------------------------------------------------------------ results
class Results:
    """Append-only JSON list; an entry (strategy, steps, seed, protocol) is computed once."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = json.loads(path.read_text()) if path.exists() else []

    def has(self, **key) -> bool:
        return any(all(row.get(k) == v for k, v in key.items()) for row in self.rows)

    def missing(self, key: dict, semi: bool = True) -> list[str]:
        """The protocols of one point still to measure: linear, and the fine-tune unless `semi` is off."""
        return [p for p in ("linear", "semi_supervised") if (p == "linear" or semi) and not self.has(protocol=p, **key)]

    def add(self, row: dict) -> None:
        from training.runfiles import atomic_write_bytes

        self.rows.append(row)
        atomic_write_bytes(self.path, json.dumps(self.rows, indent=1).encode())
        print(f"  {row['series']} {row['data']:14s} {row['strategy']:14s} steps={row['steps']!s:5s} seed={row['seed']} "
              f"{row['protocol']:15s} {row['value']:.4f}  ({row['seconds']:.0f} s)", flush=True)


def spec_for(checkpoint_cfg: dict | None, domain, network: dict):
    """The preprocessing a checkpoint was trained with (its mean/std), at the series' resolution;
    random init (no checkpoint) uses the domain's statistics, as Target's training does."""
    from training.views import input_spec

    return input_spec(domain, network["channels"], network["resolution"], base_cfg=checkpoint_cfg,
                      crop_pct=network["crop_pct"])


def linear_point(model, splits: dict, spec, target: str, seed: int, protocol: dict) -> dict:
    from training.evaluate import linear_eval

    options = protocol["linear"]
    return linear_eval(model, splits["train"], splits["val"], splits["test"], spec, target,
                       train_images=options["train_images"], eval_images=options["eval_images"],
                       lrs=options["lrs"], iterations=options["iterations"], seed=seed)


def finetune_point(make_model, splits: dict, spec, target: str, seed: int, protocol: dict,
                   iterations: int | None = None) -> dict:
    """The 1000-label fine-tune of the protocol (`iterations` overrides its length: finetune_length.py)."""
    from training.evaluate import finetune_eval

    options = protocol["semi"]
    return finetune_eval(make_model, int(make_model().num_features), splits["train"], splits["val"], splits["test"],
                         spec, target, labels=options["labels"], lrs=options["lrs"],
                         iterations=iterations or options["iterations"], batch_size=options["batch_size"],
                         eval_images=options["eval_images"], seed=seed)


def evaluate(results: Results, series: str, target: str, strategy: str, steps: int, seed: int, make_model,
             checkpoint_cfg: dict | None, protocol: dict, semi: bool = True) -> None:
    network = network_of(series, protocol)
    from training.data import open_source

    key = dict(series=series, data=target, strategy=strategy, steps=steps, seed=seed, arch=network["arch"])
    todo = results.missing(key, semi)
    if not todo:
        return
    splits = {s: open_source(target, s, target) for s in ("train", "val", "test")}
    spec = spec_for(checkpoint_cfg, splits["train"].domain, network)
    if "linear" in todo:
        start = time.time()
        record = linear_point(make_model(), splits, spec, target, seed, protocol)
        results.add({**key, "protocol": "linear", "metric": record["metric"], "value": record["value"],
                     "lr": record["lr"], "val": record["val_score"], "mean": list(spec.mean),
                     "seconds": time.time() - start})
    if "semi_supervised" in todo:
        start = time.time()
        record = finetune_point(make_model, splits, spec, target, seed, protocol)
        results.add({**key, "protocol": "semi_supervised", "metric": "top1", "value": record["value"],
                     "lr": record["lr"], "val": record["val_score"], "seconds": time.time() - start})


# ------------------------------------------------------------------ training pieces
def ladder_run(run_dir: Path, export_dir, config_overrides: dict, data: str, init: str | None, rungs, name_of_rung,
               network: dict):
    """One MoCo run whose schedule spans the top rung, exported (zoo format) at every rung."""
    from training import config as configuration
    from training.engine import pretrain
    from training.export import export

    exports = {steps: export_dir(steps) for steps in rungs}
    if all((path / "zoo.json").exists() for path in exports.values()):
        return exports
    # gray data gives 1 channel by itself ("auto"); only the RGB-replica networks name it, so a run's config stays
    # the one `python -m training pretrain` writes for the same recipe (the ssl base reuses such a run)
    config = configuration.resolve(None, {**config_overrides, "data": data, "init": init, "arch": network["arch"],
                                          **({"channels": network["channels"]} if network["channels"] == 3 else {})})
    pretrain(config, run_dir)
    for steps, path in exports.items():
        if not (path / "zoo.json").exists():
            export(run_dir, path, step=steps, name=name_of_rung(steps))
            if init:
                from training.hpt import _lineage_through
                _lineage_through(init, path)
    from training import runfiles

    for _, old in runfiles.list_checkpoints(run_dir)[:-1]:  # the rungs are exported; keep the last to extend
        old.unlink(missing_ok=True)
    return exports


def ssl_base_dir(tag: str, arch: str) -> Path:
    return WORK / tag / ("ssl_base" if arch == "mnv2" else f"ssl_base_{arch}")  # round 2's first try: mnv2


def ssl_base_export(tag: str, arch: str, steps: int) -> Path:
    """Where the self-supervised base of `steps` MoCo steps is exported (zoo format)."""
    return ssl_base_dir(tag, arch) / f"moco-fashion_mnist-{arch}-{steps}"


def series_work(tag: str, series: str, arch: str, target: str) -> Path:
    """One (series, target)'s runs and exports, per network (round 2's first, MobileNetV2, ssl work stays apart);
    a strategy's export for a seed is `<this>/seed<seed>/<strategy>_<steps>`."""
    return WORK / tag / f"{series}-{arch}" / target


def results_path(tag: str, series: str, target: str) -> Path:
    return RESULTS / f"hpt_repro.{'' if tag == 'full' else tag + '.'}{series}.{target}.json"


def random_init(network: dict, seed: int):
    """The Random strategy's network: the seed, then the series' architecture as built."""
    import torch

    from training.models import build_backbone

    torch.manual_seed(seed)
    return build_backbone(network["arch"], network["channels"]).module


def ssl_base(protocol: dict, tag: str) -> Path:
    """MoCo v2 from scratch on Fashion-MNIST: the self-supervised base (checkpointed every 250 steps,
    resumable; kNN on the val split every `knn_every` steps)."""
    from zoo.names import ModelName, format_name

    network = network_of("ssl", protocol)
    steps, arch = network["base_steps"], network["arch"]
    work = ssl_base_dir(tag, arch)
    overrides = moco_overrides(network, steps, 0, knn_every=protocol["knn_every"], checkpoint_every=min(steps, 250),
                               keep_checkpoints=2)
    name = format_name(ModelName("moco", "fashion_mnist", arch, steps=steps))
    exports = ladder_run(work / "run", lambda s: ssl_base_export(tag, arch, s), overrides, "fashion_mnist",
                         None, (steps,), lambda s: name, network)
    check_base_identity(exports[steps], protocol, tag)
    return exports[steps]


def base_record_path(tag: str) -> Path:
    return RESULTS / f"hpt_repro.{'' if tag == 'full' else tag + '.'}ssl_base.json"


def check_base_identity(export: Path, protocol: dict, tag: str) -> None:
    """Every committed ssl point was measured on one base, but benchmarks/_work is not in git: a new checkout
    retrains the base from its recipe (seeded, one thread), and it must come out bit-identical or the points
    of later seeds would pair with a different base than the earlier ones. The committed record keeps the base's
    weights sha256 (and its kNN curve); a base rebuilt before a record existed is checked against the committed
    Base linear point instead (the same probe on the same weights gives the same value)."""
    import zoo
    from training.data import open_source

    sha = json.loads((export / "zoo.json").read_text())["weights"]["model.safetensors"]["sha256"]
    path = base_record_path(tag)
    if path.exists():
        recorded = json.loads(path.read_text())
        if recorded["sha256"] != sha:
            raise SystemExit(f"the rebuilt ssl base {export} (sha256 {sha[:12]}...) is not the one the committed points "
                             f"were measured on ({recorded['sha256'][:12]}..., {path}); training is not reproducible "
                             "here (another torch version or thread count?): use that environment, or move the "
                             "ssl results aside and start the series again")
        return
    checked = None
    rows = [r for r in load_rows(tag) if r["series"] == "ssl" and r["strategy"] == "base" and r["protocol"] == "linear"]
    if rows:
        row = min(rows, key=lambda r: (r["seed"], r["data"]))
        splits = {s: open_source(row["data"], s, row["data"]) for s in ("train", "val", "test")}
        spec = spec_for(zoo.info(str(export))["pretrained_cfg"], splits["train"].domain, network_of("ssl", protocol))
        value = linear_point(zoo.load(str(export)), splits, spec, row["data"], row["seed"], protocol)["value"]
        if abs(value - row["value"]) > 1e-6:
            raise SystemExit(f"the rebuilt ssl base {export} gives Base linear {value:.6f} on {row['data']} (seed "
                             f"{row['seed']}), the committed point says {row['value']:.6f}: it is not the base the "
                             "committed ssl points were measured on; move those results aside and start again")
        checked = {"data": row["data"], "seed": row["seed"], "linear": value}
    from training.runfiles import atomic_write_bytes

    record = {"name": export.name, "sha256": sha, "knn_top1": base_knn_curve(tag), "checked_against_base_point": checked}
    atomic_write_bytes(path, json.dumps(record, indent=1).encode())
    print(f"ssl base {export.name}: sha256 {sha[:12]}... recorded in {path}" +
          (f" (Base linear on {checked['data']} reproduced: {checked['linear']:.4f})" if checked else ""), flush=True)


def base_knn_curve(tag: str) -> list:
    """The base run's kNN monitor; from the committed record when the run folder is gone (a new checkout)."""
    from training import runfiles

    run = ssl_base_dir(tag, NETWORKS["ssl"]["arch"]) / "run"
    if run.exists():
        return [(r["step"], r["knn_top1"]) for r in runfiles.read_metrics(run) if "knn_top1" in r]
    record = base_record_path(tag)
    return [tuple(p) for p in json.loads(record.read_text())["knn_top1"]] if record.exists() else []


def run_point(series: str, target: str, seed: int, base: str | None, protocol: dict, tag: str,
              part: str = "all") -> None:
    """Every strategy for one (series, target, seed), cheapest first; `part` keeps those that start from the base
    ("from-base": Base, Base-BN, HPT, HPT-BN, chain) or those that do not ("from-scratch": random, Random-BN,
    Target), so that a session without the ssl base (a new checkout: ~1.4 core-hours to rebuild) can still
    run the strategies that never touch it."""
    import zoo

    network = network_of(series, protocol)
    arch = network["arch"]
    work = series_work(tag, series, arch, target)
    results = Results(results_path(tag, series, target))
    print(f"[{series} {target} seed {seed}] work in {work}", flush=True)
    from_base, from_scratch = part in ("all", "from-base"), part in ("all", "from-scratch")

    def random_init_bn():  # the state training starts from: BN statistics of the data, not identity
        from training.data import open_source
        from training.hpt import eval_batches

        train = open_source(target, "train", target)
        return zoo.recalibrate_bn(random_init(network, seed),
                                  eval_batches(train, spec_for(None, train.domain, network), 250, 2000))

    if from_scratch:
        evaluate(results, series, target, "random", 0, seed, lambda: random_init(network, seed), None, protocol)
        evaluate(results, series, target, "random_bn", 0, seed, random_init_bn, None, protocol, semi=False)
    if from_base:
        run_from_base(results, series, target, seed, base, protocol, work, network)
    if from_scratch:
        run_target(results, series, target, seed, protocol, work, network)


def point_missing(results: "Results", series: str, target: str, strategy: str, steps: int, seed: int,
                  arch: str) -> bool:
    """Whether a point still needs measuring. The exports live in _work, which a new checkout lacks: a strategy is
    retrained only for a point still to measure."""
    return bool(results.missing(dict(series=series, data=target, strategy=strategy, steps=steps, seed=seed,
                                     arch=arch)))


def run_from_base(results: "Results", series: str, target: str, seed: int, base: str, protocol: dict, work: Path,
                  network: dict) -> None:
    """Base, Base-BN, the HPT ladder, HPT-BN and the chain: every strategy that starts from the base."""
    import zoo
    from training import hpt

    arch = network["arch"]
    base_cfg = zoo.info(base)["pretrained_cfg"]
    evaluate(results, series, target, "base", 0, seed, lambda: zoo.load(base), base_cfg, protocol)

    def missing(strategy: str, steps: int) -> bool:
        return point_missing(results, series, target, strategy, steps, seed, arch)

    base_bn = work / "base_bn"  # deterministic: one recalibration serves every seed
    if missing("base_bn", 0) and not (base_bn / "zoo.json").exists():
        hpt.run(hpt.recipe("base", target, arch, base=base), base_bn,
                overrides={"image_size": network["resolution"], "crop_pct": network["crop_pct"]})
    evaluate(results, series, target, "base_bn", 0, seed, lambda: zoo.load(base_bn), base_cfg, protocol)

    def trained(strategy: str, steps: int, out: Path, **extra) -> Path:
        if not (out / "zoo.json").exists():
            spec = hpt.recipe(strategy, target, arch, base=base, source=extra.pop("source", None))
            hpt.run(spec, out, work=work / f"runs-{out.name}", overrides=moco_overrides(network, steps, seed, **extra))
        return out

    for steps in filter(lambda steps: missing("hpt", steps), network["hpt_ladder"]):
        out = trained("hpt", steps, work / f"seed{seed}" / f"hpt_{steps}")
        evaluate(results, series, target, "hpt", steps, seed, lambda: zoo.load(out), base_cfg, protocol)
    if missing("hptbn", network["hptbn_steps"]):
        out = trained("hptbn", network["hptbn_steps"], work / f"seed{seed}" / f"hptbn_{network['hptbn_steps']}",
                      lr=0.1, lr_reference_batch=256)  # the study's HPT-BN lr (0.1 at batch 256, scaled)
        evaluate(results, series, target, "hptbn", network["hptbn_steps"], seed, lambda: zoo.load(out), base_cfg,
                 protocol)
    source = SERIES[series]["chain"].get(target)
    if source and missing(f"chain:{source}", network["chain_steps"]):
        out = trained("hpt", network["chain_steps"], work / f"seed{seed}" / f"chain_{network['chain_steps']}",
                      source=source)
        evaluate(results, series, target, f"chain:{source}", network["chain_steps"], seed, lambda: zoo.load(out),
                 base_cfg, protocol)


def run_target(results: "Results", series: str, target: str, seed: int, protocol: dict, work: Path,
               network: dict) -> None:
    """Target: MoCo v2 from scratch on the target, one run whose cosine schedule spans the top rung, exported at
    every rung."""
    import zoo
    from training import hpt

    arch = network["arch"]
    ladder = network["target_ladder"]
    if not any(point_missing(results, series, target, "target", steps, seed, arch) for steps in ladder):
        return
    seed_dir = work / f"seed{seed}"
    exports = ladder_run(seed_dir / "target_run", lambda s: seed_dir / f"target_{s}",
                         moco_overrides(network, ladder[-1], seed, checkpoint_every=math.gcd(*ladder),
                                        keep_checkpoints=len(range(0, ladder[-1], math.gcd(*ladder)))), target, None,
                         ladder, lambda s: hpt.name_of("target", target, arch, steps=s), network)
    for steps, path in exports.items():
        evaluate(results, series, target, "target", steps, seed, lambda: zoo.load(path),
                 zoo.info(path)["pretrained_cfg"], protocol)


# ------------------------------------------------------------------ report (reads the JSON only)
def load_rows(tag: str) -> list[dict]:
    rows = []
    prefix = "hpt_repro." if tag == "full" else f"hpt_repro.{tag}."
    for series in SERIES:
        for path in sorted(RESULTS.glob(f"{prefix}{series}.*.json")):
            rows += json.loads(path.read_text())
    return rows


def summarise(rows: list[dict]) -> dict:
    """(series, data, strategy, steps, protocol) -> {"mean", "std", "n", "values"}."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["series"], row["data"], row["strategy"], row["steps"], row["protocol"]), []).append(
            row["value"])
    out = {}
    for key, values in groups.items():
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else float("nan")
        out[key] = {"mean": mean, "std": std, "n": len(values), "values": values}
    return out


def steps_to_match(curves: dict, series: str, data: str) -> tuple[float | None, dict]:
    """On the curves given ({(series, data, strategy, steps, "linear"): value}): Target's best and the step
    where it is reached; the fewest HPT steps whose value matches it. Ratio = target steps / HPT steps."""
    target = sorted((k[3], v) for k, v in curves.items() if k[:3] == (series, data, "target") and k[4] == "linear")
    hpt_runs = sorted((k[3], v) for k, v in curves.items() if k[:3] == (series, data, "hpt") and k[4] == "linear")
    if not target or not hpt_runs:
        return None, {}
    best_steps, best = max(target, key=lambda item: item[1])
    matched = next((steps for steps, value in hpt_runs if value >= best), None)
    details = {"target_best": best, "target_steps": best_steps, "target_budget": target[-1][0],
               "hpt_best": max(v for _, v in hpt_runs),
               "hpt_steps_to_match": matched}
    return (best_steps / matched if matched else None), details


# The study's claims, each a paired comparison over seeds (the same seed's two values: the Base strategies
# vary only by their evaluation seeds, so every pair shares the probe's and the fine-tune's draws). The rule
# was fixed before the seeds 1 and 2 finished: a difference counts only when its 95% t-interval (n - 1
# degrees of freedom: 4.30 x its standard error at n = 3) excludes 0; fewer than 3 pairs is "pending".
CLAIMS = (
    # (claim, better, worse, protocols); "hpt@*" = every HPT rung of the ladder, each compared on its own
    ("HPT > Base", "hpt@*", "base@0", ("linear", "semi_supervised")),
    ("Base-BN vs Base", "base_bn@0", "base@0", ("linear", "semi_supervised")),
    ("HPT-BN vs HPT (same steps)", "hptbn@{hptbn}", "hpt@{hptbn}", ("linear", "semi_supervised")),
    ("chain vs HPT (same steps)", "chain@{chain}", "hpt@{chain}", ("linear", "semi_supervised")),
)
MIN_PAIRS = 3


def paired_difference(rows: list[dict], first: tuple, second: tuple) -> dict | None:
    """first - second over the seeds both have; first/second = (series, data, strategy, steps, protocol).
    Returns mean, std, n, the 95% t-interval and a verdict: "higher", "lower", "within noise" or "pending"."""
    from scipy import stats

    def by_seed(key):
        return {r["seed"]: r["value"] for r in rows
                if (r["series"], r["data"], r["strategy"], r["steps"], r["protocol"]) == key}

    a, b = by_seed(first), by_seed(second)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    differences = [a[s] - b[s] for s in seeds]
    n = len(differences)
    mean = sum(differences) / n
    if n < 2:
        return {"mean": mean, "std": float("nan"), "n": n, "low": float("nan"), "high": float("nan"),
                "verdict": f"pending (n={n})"}
    std = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    verdict = (f"pending (n={n})" if n < MIN_PAIRS else "higher" if low > 0 else "lower" if high < 0
               else "within noise")
    return {"mean": mean, "std": std, "n": n, "low": low, "high": high, "verdict": verdict}


def claim_verdicts(rows: list[dict]) -> list[dict]:
    """Every paired comparison of CLAIMS that the results hold, per (series, target, protocol)."""
    out = []
    for series, data in sorted({(r["series"], r["data"]) for r in rows}):
        network = NETWORKS[series]
        chain_source = SERIES[series]["chain"].get(data)
        rungs = {"hptbn": network["hptbn_steps"], "chain": network["chain_steps"]}
        for claim, better, worse, protocols in CLAIMS:
            strategy = better.split("@")[0]
            if strategy == "chain":
                if not chain_source:
                    continue
                strategy = f"chain:{chain_source}"
            steps = list(network["hpt_ladder"]) if better.endswith("@*") else [
                int(better.split("@")[1].format(**rungs))]
            for step in steps:
                worse_strategy, worse_steps = worse.split("@")
                worse_steps = step if worse_steps == "*" else int(worse_steps.format(**rungs))
                for protocol in protocols:
                    result = paired_difference(rows, (series, data, strategy, step, protocol),
                                               (series, data, worse_strategy, worse_steps, protocol))
                    if result:
                        out.append({"claim": claim, "series": series, "data": data, "protocol": protocol,
                                    "first": f"{strategy} {step}", "second": f"{worse_strategy} {worse_steps}",
                                    **result})
    return out


# one colour per strategy in every panel, so a reader can follow HPT across targets and protocols
STRATEGY_STYLE = {"target": ("tab:blue", "o-"), "hpt": ("tab:orange", "s-"), "hptbn": ("tab:green", "^"),
                  "chain": ("tab:purple", "*")}
LINE_STYLE = {"random": ("red", "-."), "base": ("gray", "--"), "base_bn": ("black", ":")}
PROTOCOL_LABEL = {"linear": "linear probe top-1 (test)", "semi_supervised": "1000-label fine-tune top-1 (test)"}


def plot(summary: dict, path: Path) -> None:
    """One column per (series, target), one row per protocol; markers are means over seeds, bars +- std
    (none at n = 1), horizontal lines the step-free strategies with their +- std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = panels(summary)
    protocols = tuple(PROTOCOL_LABEL)
    figure, axes = plt.subplots(len(protocols), len(columns), figsize=(5.5 * len(columns), 4.2 * len(protocols)),
                                squeeze=False)
    spread = lambda point: 0 if math.isnan(point["std"]) else point["std"]  # noqa: E731
    for row, protocol in enumerate(protocols):
        for axis, (series, data) in zip(axes[row], columns):
            points = {k: v for k, v in summary.items() if k[:2] == (series, data) and k[4] == protocol}
            for strategy, (color, style) in STRATEGY_STYLE.items():
                curve = sorted((k[3], v, k[2]) for k, v in points.items() if k[2].split(":")[0] == strategy)
                if curve:
                    label = strategy if strategy != "chain" else f"chain via {curve[0][2][6:]}"
                    axis.errorbar([s for s, _, _ in curve], [v["mean"] for _, v, _ in curve],
                                  yerr=[spread(v) for _, v, _ in curve], fmt=style, color=color, capsize=3,
                                  markersize=10 if strategy == "chain" else 6,
                                  label=f"{label} (n={min(v['n'] for _, v, _ in curve)})")
            for strategy, (color, dash) in LINE_STYLE.items():
                point = next((v for k, v in points.items() if k[2] == strategy), None)
                if point:
                    axis.axhline(point["mean"], color=color, linestyle=dash, label=f"{strategy} (n={point['n']})")
                    if spread(point):
                        axis.axhspan(point["mean"] - point["std"], point["mean"] + point["std"], color=color,
                                     alpha=0.12)
            if not points:
                axis.set_axis_off()
                continue
            axis.set_xscale("log")
            axis.set_xlabel("MoCo steps on the target (log)")
            axis.set_ylabel(f"{PROTOCOL_LABEL[protocol]}, mean +- std")
            axis.set_title(f"{data}, {'self-supervised' if series == 'ssl' else 'supervised ImageNet'} base")
            axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def signed(value: float) -> str:
    """An interval's bound; with one seed there is none ("-", not nan)."""
    return "-" if math.isnan(value) else f"{value:+.4f}"


def json_dumps(data) -> str:
    """Strict JSON: an undefined spread (one seed) is null, not NaN (which other JSON readers refuse)."""
    def clean(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(data), indent=1, allow_nan=False)


# RESULTS.md holds the series' tables between these markers; `--report` rewrites what lies between them from the
# JSON (never by hand), and leaves the rest of the file as it is
RESULTS_MD = HERE / "RESULTS.md"
TABLES_START = "<!-- hpt_repro --report writes from here: generated from benchmarks/results, edits are overwritten -->"
TABLES_END = "<!-- hpt_repro --report writes up to here -->"


def cell(point: dict | None) -> str:
    """mean +- std (n); one seed has no spread."""
    if not point:
        return "-"
    spread = "" if math.isnan(point["std"]) else f" +- {point['std']:.4f}"
    return f"{point['mean']:.4f}{spread} ({point['n']})"


def panel_keys(summary: dict, series: str, data: str) -> list[tuple]:
    return sorted({k[2:4] for k in summary if k[:2] == (series, data)},
                  key=lambda k: (ORDER.index(k[0].split(":")[0]), k[1]))


def steps_to_match_line(summary: dict, rows: list[dict], series: str, data: str) -> tuple[str | None, float | None]:
    """Steps-to-match on the mean curves, with the per-seed ratios as its spread (None: no Target/HPT pair)."""
    ratio, details = steps_to_match({k: v["mean"] for k, v in summary.items()}, series, data)
    if not details:
        return None, None
    per_seed = []
    for seed in sorted({r["seed"] for r in rows if r["series"] == series and r["data"] == data}):
        own = {(r["series"], r["data"], r["strategy"], r["steps"], r["protocol"]): r["value"] for r in rows
               if r["seed"] == seed}
        seed_ratio, seed_details = steps_to_match(own, series, data)
        if seed_details:  # a seed without both curves yet is not "no match"
            per_seed.append(seed_ratio)
    line = (f"mean curves: Target best {details['target_best']:.4f} at {details['target_steps']} steps "
            f"(of its {details['target_budget']}-step budget); HPT best {details['hpt_best']:.4f}; HPT steps to "
            f"match: {details['hpt_steps_to_match']} -> " + (f"{ratio:.1f}x" if ratio else "no match")
            + "; per seed: " + ", ".join(f"{r:.1f}x" if r else "none" for r in per_seed))
    return line, ratio


def steps_to_match_lines(summary: dict, rows: list[dict]) -> dict:
    """(series, data) -> (steps-to-match line or None, ratio) for every panel, in the report's order."""
    return {(series, data): steps_to_match_line(summary, rows, series, data) for series, data in panels(summary)}


def speedup_line(lines: dict) -> str:
    """The headline: the smaller steps-to-match ratio of the ssl series' targets (mean curves)."""
    ratios = {data: ratio for (series, data), (line, ratio) in lines.items() if series == "ssl" and line}
    if ratios and all(ratios.values()):
        return f"hpt steps-to-match speedup vs target: {min(ratios.values()):.1f}x"
    if ratios:
        missing = [d for d, r in ratios.items() if not r]
        return f"hpt steps-to-match speedup vs target: 0.0x (HPT did not match Target's best on {', '.join(missing)})"
    return "hpt steps-to-match speedup vs target: n/a (the self-supervised-base series has no Target/HPT pair yet)"


def panels(summary: dict) -> list[tuple[str, str]]:
    return sorted({(k[0], k[1]) for k in summary}, key=lambda p: (list(SERIES).index(p[0]), p[1]))


PROTOCOL_NAME = {"linear": "linear", "semi_supervised": "fine-tune"}


def markdown_tables(summary: dict, rows: list[dict], verdicts: list[dict], lines_to_match: dict) -> str:
    """The tables RESULTS.md shows, from the same numbers --report prints (`lines_to_match`: steps_to_match_lines)."""
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"Generated by `python benchmarks/hpt_repro.py --report` from {len(rows)} measured points (seeds "
             f"{', '.join(map(str, seeds))}): mean +- std over seeds (n). Linear = the study's linear probe, "
             "fine-tune = the 1000-label fine-tune (150 iterations; see the fine-tune length check).", ""]
    for (series, data), (line, _) in lines_to_match.items():
        base = "self-supervised (MoCo v2 ResNet-18, Fashion-MNIST)" if series == "ssl" else \
            "supervised ImageNet MobileNetV2"
        lines += [f"**{data}, {base} base**", "", "| strategy | steps | linear | fine-tune |", "|---|---|---|---|"]
        for strategy, steps in panel_keys(summary, series, data):
            lines.append(f"| {strategy} | {steps} | {cell(summary.get((series, data, strategy, steps, 'linear')))} | "
                         f"{cell(summary.get((series, data, strategy, steps, 'semi_supervised')))} |")
        if line:
            lines += ["", f"Steps to match: {line}."]
        lines.append("")
    if verdicts:
        lines += [f"Paired differences over seeds (first - second), 95% t-interval; a verdict needs n >= {MIN_PAIRS}:",
                  "", "| claim | base | target | protocol | first - second | mean | 95% interval | n | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {v['claim']} | {v['series']} | {v['data']} | {PROTOCOL_NAME[v['protocol']]} | {v['first']} - "
                  f"{v['second']} | {v['mean']:+.4f} | [{signed(v['low'])}, {signed(v['high'])}] | {v['n']} | "
                  f"{v['verdict']} |" for v in verdicts]
        lines.append("")
    lines.append(f"`{speedup_line(lines_to_match)}`")
    return "\n".join(lines)


def write_tables_into(path: Path, tables: str) -> bool:
    """Replace what lies between the markers in `path` (atomically); a file without both markers is left alone."""
    from training.runfiles import atomic_write_bytes

    text = path.read_text() if path.exists() else ""
    if TABLES_START not in text or TABLES_END not in text or text.index(TABLES_START) > text.index(TABLES_END):
        return False
    head, rest = text.split(TABLES_START, 1)
    tail = rest.split(TABLES_END, 1)[1]
    atomic_write_bytes(path, f"{head}{TABLES_START}\n{tables}\n{TABLES_END}{tail}".encode())
    return True


def report(tag: str) -> None:
    rows = load_rows(tag)
    curve = base_knn_curve(tag)
    if curve:
        print("ssl base (MoCo v2, Fashion-MNIST) kNN on val: " + ", ".join(f"{s}: {v:.3f}" for s, v in curve))
    if not rows:
        print(f"no results yet in {RESULTS}/hpt_repro.*.json")
        print("hpt steps-to-match speedup vs target: n/a (no results yet)")
        return
    summary = summarise(rows)
    name = "hpt_repro" if tag == "full" else f"hpt_repro.{tag}"
    table = [{"series": k[0], "data": k[1], "strategy": k[2], "steps": k[3], "protocol": k[4], **v}
             for k, v in sorted(summary.items(), key=lambda kv: str(kv[0]))]
    verdicts = claim_verdicts(rows)
    (RESULTS / f"{name}.summary.json").write_text(json_dumps({"points": table, "ssl_base_knn": curve,
                                                          "verdicts": verdicts}))
    plot(summary, RESULTS / f"{name}.png")
    lines_to_match = steps_to_match_lines(summary, rows)
    for (series, data), (line, _) in lines_to_match.items():
        print(f"\n{series} base, target {data}")
        print(f"  {'strategy':16s} {'steps':>6s} {'linear (mean +- std, n)':>26s} {'1000-label':>24s}")
        for strategy, steps in panel_keys(summary, series, data):
            cells = [cell(summary.get((series, data, strategy, steps, protocol)))
                     for protocol in ("linear", "semi_supervised")]
            print(f"  {strategy:16s} {steps:>6d} {cells[0]:>26s} {cells[1]:>24s}")
        if line:
            print(f"  {line}")
    if verdicts:
        print(f"\npaired differences over seeds (first - second), 95% t-interval; verdict needs n >= {MIN_PAIRS}:")
        for v in verdicts:
            print(f"  {v['claim']:27s} {v['series']} {v['data']:13s} {v['protocol']:15s} {v['first']:>10s} - "
                  f"{v['second']:<10s} {v['mean']:+.4f} [{signed(v['low'])}, {signed(v['high'])}] n={v['n']} "
                  f"{v['verdict']}")
    if tag == "full" and write_tables_into(RESULTS_MD, markdown_tables(summary, rows, verdicts, lines_to_match)):
        print(f"\ntables written into {RESULTS_MD.relative_to(HERE.parent)} (between its hpt_repro markers)")
    print(speedup_line(lines_to_match))


def ensure_base_offline() -> None:
    """Put the supervised base in a private HF cache the real way (published to a mirror, served by olah,
    downloaded by name), then work offline. Must run before anything imports huggingface_hub."""
    import subprocess
    import tempfile

    home = HERE / "_work" / "hpt" / "hf-home"
    os.environ.update(HF_HOME=str(home), ZOO_HOME=str(home / "zoo"), HF_HUB_DISABLE_XET="1")
    # the catalog pins a revision: a cache filled for an older pin does not hold it (the default model was
    # republished once), so ask the loader offline first and go through the mirror only when it misses
    cached = subprocess.run([sys.executable, "-m", "zoo", "download", SUP_BASE], capture_output=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}).returncode == 0
    if not cached:
        from zoo.defaults import prepare_mirror
        from zoo.mirror import serve

        with tempfile.TemporaryDirectory() as mirror:  # only needed for this one download
            prepare_mirror(mirror)
            with serve(mirror) as endpoint:
                subprocess.run([sys.executable, "-m", "zoo", "download", SUP_BASE], check=True,
                               env={**os.environ, "HF_ENDPOINT": endpoint})
    os.environ["HF_HUB_OFFLINE"] = "1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", choices=tuple(SERIES), action="append")
    parser.add_argument("--targets", help="comma-separated targets (default: the series' own)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: 0,1,2)")
    parser.add_argument("--base-only", action="store_true", help="only train/export the self-supervised base")
    parser.add_argument("--part", choices=("all", "from-base", "from-scratch"), default="all",
                        help="only the strategies that start from the base (Base, Base-BN, HPT, HPT-BN, chain) or "
                             "only those that do not (random, Random-BN, Target): a new checkout has no ssl base "
                             "until it is rebuilt (~1.4 core-hours), and from-scratch work does not wait for it")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, minutes: a smoke check")
    parser.add_argument("--report", action="store_true", help="only read the JSON and print the summary")
    args = parser.parse_args()
    tag = "quick" if args.quick else "full"
    if args.report:
        report(tag)
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    protocol = QUICK if args.quick else FULL
    ensure_base_offline()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(protocol["seeds"])
    series_list = args.series or list(SERIES)
    ssl = None
    if ("ssl" in series_list and args.part != "from-scratch") or args.base_only:
        ssl = str(ssl_base(protocol, tag))
    if args.base_only:
        report(tag)
        return 0
    for seed in seeds:  # seed-major: a stopped run leaves whole curves of the first seeds
        for series in series_list:
            targets = args.targets.split(",") if args.targets else SERIES[series]["targets"]
            for target in targets:
                run_point(series, target, seed, ssl if series == "ssl" else SUP_BASE, protocol, tag, args.part)
    report(tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
