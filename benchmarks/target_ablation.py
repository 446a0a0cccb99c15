"""Why does Target (MoCo v2 from scratch) fall below random init in hpt_repro.py but rise in
quality_fashion.py? One change at a time from the repro setup, short runs, same evaluations.

The repro setup (hpt_repro.py, round 1): MobileNetV2, 64 px gray replicated to RGB, batch 32,
lr 0.03 x 32/256, queue 4096, key momentum 0.99, T 0.2, MLP 2048, split-BN 8 groups (4 images
each), the study's augmentations (blur); trained with the *domain's* mean/std, but evaluated with
the ImageNet base's mean/std (the evaluation spec came from the base for every strategy).

Each variant trains `--steps` steps on Fashion-MNIST (seed 0) and is evaluated with the spec it
was trained with: kNN (k 200, t 0.1, cosine: scale-free), the study's linear probe (SGD, lr grid
{0.3, 3, 30}, validation-selected) on raw features, the same probe on standardised features
(scale-free), and the mean feature norm. Random init gets the same evaluations. Every trained
variant is also evaluated after re-estimating its BN running statistics on 2000 clean training
images (`domain_bnrecal`: are the eval-mode statistics, averaged over augmented views with momentum
0.1, the problem?). The `repro` variant and random init are also evaluated with the ImageNet spec,
as round 1 did.

    python benchmarks/target_ablation.py                  # all variants, resumable (~6 min each)
    python benchmarks/target_ablation.py --only repro,splits2
    python benchmarks/target_ablation.py --report

Results: benchmarks/results/target_ablation.json (one entry per variant and evaluation spec).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import hpt_series  # noqa: E402  (the ssl series' recipe, for its variants)
RESULTS = HERE / "results" / "target_ablation.json"
WORK = HERE / "_work" / "target_ablation"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

# hpt_repro.py round 1, Target strategy (training.hpt.STUDY_MOCO + training_overrides)
REPRO = {"method": "moco", "arch": "mnv2", "channels": 3, "image_size": 64, "crop_pct": 1.0, "batch_size": 32,
         "lr": 0.03, "lr_reference_batch": 256, "momentum": 0.9, "weight_decay": 1e-4, "queue_size": 4096,
         "ema_momentum": 0.99, "temperature": 0.2, "proj_hidden": 2048, "proj_dim": 128, "bn_splits": 8,
         "augment": "moco"}
_SSL = hpt_series.NETWORKS["ssl"]  # the ssl series' network and MoCo recipe, taken from the series itself
SSL_RECIPE = {**{key: _SSL[key] for key in ("arch", "channels", "crop_pct", "batch_size")},
              "image_size": _SSL["resolution"], **_SSL["moco"]}
# one change each (name -> (overrides, what it tests))
VARIANTS = {
    "repro": ({}, "round 1's Target recipe"),
    "splits2": ({"bn_splits": 2}, "split-BN groups of 16 instead of 4"),
    "splits1": ({"bn_splits": 1}, "no split-BN (one group of 32)"),
    "lr4x": ({"lr": 0.12}, "lr x4 (0.015 at batch 32: the quality run's lr at batch 128)"),
    "size32": ({"image_size": 32}, "32 px instead of 64"),
    "gray1": ({"channels": 1}, "one gray channel instead of RGB replicas"),
    "small_recipe": ({"temperature": 0.1, "proj_hidden": 512, "weight_decay": 5e-4, "augment": "moco_small"},
                     "the quality run's MoCo 'small' recipe (T 0.1, MLP 512, wd 5e-4, no blur)"),
    "queue1024": ({"queue_size": 1024}, "queue 1024 (32 steps old at most, vs 128)"),
    "m0999": ({"ema_momentum": 0.999}, "key momentum 0.999"),
    "batch128": ({"batch_size": 128}, "batch 128, lr scaled linearly (same steps: 4x the images)"),
    "r18c": ({"arch": "r18c", "image_size": 28, "channels": 1}, "the quality run's network and size"),
    # hpt_repro's ssl-series Target recipe (ResNet-18, 28 px, batch 128, its SMALL_MOCO), then one change: on
    # digits (1,347 train images) its 4096-key queue holds every image ~3 times, so a query's own image, seen in
    # earlier epochs, sits among its negatives; 1024 keys (8 batches of one epoch's permutation) holds none
    "ssl_recipe": (SSL_RECIPE, "hpt_repro's ssl-series Target recipe (queue 4096)"),
    "ssl_recipe_q1024": ({**SSL_RECIPE, "queue_size": 1024}, "the ssl-series recipe with a 1024-key queue"),
}


def evaluations(backbone, spec, sets, args) -> dict:
    import torch

    from training.evaluate import knn_predict, linear_probe
    from training.features import extract, subset

    train, val, test = sets
    index = subset(args.eval_train, len(train))
    val_index, test_index = subset(args.eval_test // 2, len(val), 2), subset(args.eval_test, len(test), 3)
    x = {name: extract(backbone, s, spec, i) for name, s, i in (("train", train, index), ("val", val, val_index),
                                                                 ("test", test, test_index))}
    y = {name: torch.from_numpy(s.labels()[i]) for name, s, i in (("train", train, index), ("val", val, val_index),
                                                                   ("test", test, test_index))}
    knn = float((knn_predict(x["train"], y["train"], x["test"], 10) == y["test"]).float().mean())
    raw = linear_probe(x["train"], y["train"], x["val"], y["val"], x["test"], y["test"], 10,
                       iterations=args.probe_iterations)
    mean, std = x["train"].mean(0), x["train"].std(0).clamp_min(1e-6)
    z = {k: (v - mean) / std for k, v in x.items()}
    standardised = linear_probe(z["train"], y["train"], z["val"], y["val"], z["test"], y["test"], 10,
                                iterations=args.probe_iterations)
    return {"knn": knn, "linear": raw["value"], "linear_lr": raw["lr"],
            "linear_grid": [{k: r[k] for k in ("lr", "val", "test")} for r in raw["grid"]],
            "linear_standardised": standardised["value"], "standardised_lr": standardised["lr"],
            "feature_norm": float(x["train"].norm(dim=1).mean()),
            "feature_dead_fraction": float((x["train"].abs().max(0).values == 0).float().mean())}


def with_stats(spec, stats: dict):
    from dataclasses import replace

    return replace(spec, mean=tuple(stats["mean"])[:spec.channels], std=tuple(stats["std"])[:spec.channels])


def main() -> int:
    global RESULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    parser.add_argument("--eval-train", type=int, default=1500)
    parser.add_argument("--eval-test", type=int, default=1000, help="test images (val: half of it)")
    parser.add_argument("--probe-iterations", type=int, default=500)
    parser.add_argument("--knn-every", type=int, default=100)
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--results", default=None, help="JSON file (a smoke check writes elsewhere)")
    args = parser.parse_args()
    RESULTS = Path(args.results) if args.results else RESULTS
    if args.report:
        report()
        return 0
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from training import runfiles
    from training.config import resolve
    from training.data import open_source
    from training.engine import pretrain, prepare
    from training.models import build_backbone

    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []

    def done(key):
        return any(all(r.get(k) == v for k, v in key.items()) for r in rows)

    def add(row):
        rows.append(row)
        runfiles.atomic_write_bytes(RESULTS, json.dumps(rows, indent=1).encode())
        print(json.dumps({k: v for k, v in row.items() if k not in ("linear_grid", "knn_curve", "config")}),
              flush=True)

    sets = tuple(open_source(args.data, split) for split in ("train", "val", "test"))
    names = args.only.split(",") if args.only else ["random", *VARIANTS]
    for name in names:
        if name == "random":
            # the repro network, the quality run's, then one change each (channels, resolution) on the repro one
            for channels, size, arch in ((3, 64, "mnv2"), (1, 28, "r18c"), (1, 64, "mnv2"), (3, 32, "mnv2")):
                config = resolve({}, {**REPRO, "arch": arch, "channels": channels, "image_size": size,
                                      "data": args.data})
                stats = ("domain", "domain_bnrecal", "imagenet") if (channels, size) == (3, 64) else ("domain", "domain_bnrecal")
                for eval_stats in stats:
                    key = {"variant": f"random-{arch}-{channels}ch-{size}px", "eval_stats": eval_stats, "data": args.data}
                    if done(key):
                        continue
                    setup = prepare(dict(config))
                    spec = with_stats(setup.spec, IMAGENET) if eval_stats == "imagenet" else setup.spec
                    torch.manual_seed(0)
                    backbone = build_backbone(arch, spec.channels).module
                    if eval_stats == "domain_bnrecal":
                        import zoo
                        from training.hpt import eval_batches

                        backbone = zoo.recalibrate_bn(backbone, eval_batches(sets[0], spec, 250, 2000))
                    start = time.time()
                    add({**key, "steps": 0, **evaluations(backbone, spec, sets, args),
                         "eval_seconds": time.time() - start})
            continue
        overrides, what = VARIANTS[name]
        config = resolve({}, {**REPRO, **overrides, "data": args.data, "steps": args.steps, "seed": 0,
                              "device": "cpu", "progress": False, "log_every": 25, "checkpoint_every": 100,
                              "keep_checkpoints": 1, "knn_every": args.knn_every, "knn_train_images": 500,
                              "knn_test_images": 300})
        run = WORK / f"{args.data}-{name}-{args.steps}"
        evals = ("domain", "domain_bnrecal", "imagenet") if name == "repro" else ("domain", "domain_bnrecal")
        if all(done({"variant": name, "eval_stats": e, "steps": args.steps, "data": args.data}) for e in evals):
            continue
        start = time.time()
        pretrain(dict(config), run)
        train_seconds = time.time() - start
        setup = prepare(dict(config))
        state = runfiles.load_checkpoint(runfiles.latest_checkpoint(run)[1])
        setup.method.load_state_dict(state["method"])
        metrics = runfiles.read_metrics(run)
        curve = [(r["step"], r["knn_top1"]) for r in metrics if "knn_top1" in r]
        losses = [(r["step"], round(r["loss"], 4)) for r in metrics if "loss" in r]
        for eval_stats in evals:
            key = {"variant": name, "eval_stats": eval_stats, "steps": args.steps, "data": args.data}
            if done(key):
                continue
            spec = with_stats(setup.spec, IMAGENET) if eval_stats == "imagenet" else setup.spec
            backbone = setup.backbone.module
            begin = time.time()
            if eval_stats == "domain_bnrecal":  # BN running statistics re-estimated on clean (unaugmented) images
                import copy

                import zoo
                from training.hpt import eval_batches

                backbone = zoo.recalibrate_bn(copy.deepcopy(backbone), eval_batches(sets[0], spec, 250, 2000))
            add({**key, "what": what, "overrides": overrides, **evaluations(backbone, spec, sets, args),
                 "knn_curve": curve, "loss_curve": losses[::4], "train_seconds": train_seconds,
                 "eval_seconds": time.time() - begin})
    report()
    return 0


def report() -> None:
    rows = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    print(f"{'variant':20s} {'eval stats':14s} {'steps':>5s} {'kNN':>6s} {'linear':>6s} {'(lr)':>5s} "
          f"{'lin std':>7s} {'|f|':>6s}  kNN curve (val)")
    for r in rows:
        curve = " ".join(f"{v:.2f}" for _, v in r.get("knn_curve", []))
        print(f"{r['variant']:20s} {r['eval_stats']:14s} {r['steps']:5d} {r['knn']:6.3f} {r['linear']:6.3f} "
              f"{r['linear_lr']:5g} {r['linear_standardised']:7.3f} {r['feature_norm']:6.2f}  {curve}")


if __name__ == "__main__":
    sys.exit(main())
