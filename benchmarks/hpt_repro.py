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

This file trains and measures; the series' definition (networks, recipes, ladders, layout) is hpt_series.py and
the analysis behind --report is hpt_report.py.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

from hpt_report import report
from hpt_series import (FULL, HERE, QUICK, SERIES, SUP_BASE, base_knn_curve, base_record_path, load_rows,
                        moco_overrides, network_of, results_path, series_work, ssl_base_dir, ssl_base_export)


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
            # the run folder sits beside its export, in the seed's folder: one shared by the seeds (runs-<name>, before
            # 2026-11-26) held the first seed's run, and the next seed's run refused it (another recipe: the seed)
            hpt.run(spec, out, work=out.parent / f"runs-{out.name}",
                    overrides=moco_overrides(network, steps, seed, **extra))
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
