"""MoCo v2 and SimCLR v2 (ResNet-18, 3x3 stem) on Fashion-MNIST for a fixed CPU budget, against random
init and a supervised baseline on the same network, batch and budget.

The budget is wall-clock minutes of training per method (--minutes): each method first runs a few
calibration steps, and its step count is set so that it trains for about that long on this machine
(a cosine schedule needs its length up front, so the budget becomes steps before training starts).
Steps are recorded, so a rerun elsewhere can pass --steps instead.

Reports kNN (k=200, t=0.1) and linear-probe (HPT protocol, scaled down) top-1 on the official test
set, writes benchmarks/results/quality_fashion.json and a PNG of kNN accuracy vs steps.

    python benchmarks/quality_fashion.py --minutes 25
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training import runfiles
from training.batches import StepBatches
from training.config import resolve
from training.data import open_source
from training.engine import apply_memory_format, prepare, wants_channels_last
from training.evaluate import knn_accuracy, linear_eval
from training.optim import cosine_lr, set_lr
from training.runner import pretrain
from training.views import view_transform

RESULTS = Path(__file__).resolve().parent / "results"
CALIBRATION_WINDOW = 6  # steps per timing window
CHECKPOINT_EVERY = 50  # the long runs resume from here after an interruption


def evaluate(backbone, spec, sets, args) -> dict:
    train, val, test = sets
    start = time.perf_counter()
    knn = knn_accuracy(backbone, train, test, spec, train_images=args.eval_train, test_images=args.eval_test)
    linear = linear_eval(backbone, train, val, test, spec, "fashion_mnist", train_images=args.eval_train,
                         eval_images=args.eval_test, iterations=args.probe_iterations, val_every=100)
    return {"knn_top1": knn, "linear_top1": linear["value"], "linear_lr": linear["lr"],
            "linear_val": linear["val_score"], "eval_seconds": time.perf_counter() - start}


def budget_steps(seconds_per_step: float, args) -> int:
    """--minutes of the machine the existing rows ran on (see machine_factor), in this method's steps here."""
    return args.steps or max(10, int(args.minutes * 60 * args.machine_factor / seconds_per_step))


def machine_factor(args, results: dict, work: Path) -> dict:
    """How much slower this machine (and thread count) is than the one that made the existing rows: the
    reference method's seconds per step here over the seconds per step it recorded there. Rows added
    later then get the same compute as the existing ones, not the same wall-clock minutes of a slower
    machine. Measured once per work folder and reused, so a resumed run keeps its step counts."""
    saved = work / "machine_factor.json"
    if saved.exists():
        return json.loads(saved.read_text())
    reference = args.budget_reference
    recorded = (results.get(reference) or {}).get("calibrated_seconds_per_step") if reference else None
    if not recorded:
        return {"factor": 1.0, "reference": None}
    here = calibrate_ssl(reference, args, work, cpu_time=True)
    record = {"factor": here / recorded, "reference": reference, "recorded_seconds_per_step": recorded,
              "here_cpu_seconds_per_step": here, "threads": torch.get_num_threads()}
    runfiles.atomic_write_bytes(saved, json.dumps(record).encode())
    return record


def saved_steps(work: Path, decide) -> int:
    """The step count decided for this run folder (calibrated once; a rerun resumes with the same schedule)."""
    path = work / "budget_steps.json"
    if path.exists():
        return json.loads(path.read_text())["steps"]
    steps = decide()
    work.mkdir(parents=True, exist_ok=True)
    runfiles.atomic_write_bytes(path, json.dumps({"steps": steps}).encode())
    return steps


def ssl_config(method, args, steps) -> dict:
    knn_every = args.knn_every or max(1, steps // args.curve_points)
    return resolve({}, dict(method=method, data="fashion_mnist", arch=args.arch, image_size=args.size, steps=steps,
                            batch_size=args.batch, knn_every=knn_every, knn_train_images=args.curve_train,
                            knn_test_images=args.curve_test, checkpoint_every=min(steps, CHECKPOINT_EVERY),
                            progress=False, log_every=10, **args.overrides))


def calibrate_ssl(method, args, work, cpu_time: bool = False) -> float:
    """Seconds per training step, as the engine runs it (data pipeline included), after warm-up.
    cpu_time: this process's CPU seconds per step instead of wall-clock (the difference between a
    short and a longer run, so start-up cancels): what a step costs, whatever else the machine runs."""
    if cpu_time:
        spent = []
        for steps in (CALIBRATION_WINDOW, 3 * CALIBRATION_WINDOW):
            work.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=work, prefix=f"{method}-cpu-calibration-") as run:
                start = time.process_time()
                _calibration_run(method, args, Path(run), steps)
                spent.append(time.process_time() - start)
        return (spent[1] - spent[0]) / (2 * CALIBRATION_WINDOW)
    run = work / f"{method}-calibration"
    _calibration_run(method, args, run, 3 * CALIBRATION_WINDOW)
    rates = [row["images_per_s"] for row in runfiles.read_metrics(run) if "images_per_s" in row]
    return args.batch / (sum(rates[1:]) / len(rates[1:]))  # the first window holds the warm-up


def _calibration_run(method, args, run: Path, steps: int) -> None:
    config = resolve({}, dict(method=method, data="fashion_mnist", arch=args.arch, image_size=args.size,
                              steps=steps, batch_size=args.batch, checkpoint_every=1000,
                              progress=False, log_every=CALIBRATION_WINDOW))
    pretrain(dict(config), run)


def self_supervised(method, args, sets, work) -> dict:
    seconds_per_step = None

    def decide() -> int:
        nonlocal seconds_per_step
        if args.steps:  # a fixed step count needs no calibration run
            return args.steps
        seconds_per_step = calibrate_ssl(method, args, work, cpu_time=args.cpu_time)
        return budget_steps(seconds_per_step, args)

    steps = saved_steps(work, decide)
    print(f"{method}: {seconds_per_step or 0:.2f} s/step calibrated -> {steps} steps", flush=True)
    config = ssl_config(method, args, steps)
    run = work / method
    start = time.perf_counter()
    pretrain(dict(config), run)
    seconds = time.perf_counter() - start
    setup = prepare(dict(config))
    setup.method.load_state_dict(runfiles.load_checkpoint(runfiles.latest_checkpoint(run)[1])["method"])
    rows = runfiles.read_metrics(run)
    curve = [(r["step"], r["knn_top1"]) for r in rows if "knn_top1" in r]
    losses = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    return {"train_seconds": seconds, "steps": steps, "calibrated_seconds_per_step": seconds_per_step,
            "curve": curve, "loss": losses, "recipe": config, **evaluate(setup.backbone.module, setup.spec, sets, args)}


def supervised(args, sets, work) -> dict:
    """Cross-entropy on the labels: same backbone, layout, batch and budget; crop+flip views, SGD
    lr 0.1 x batch/256 with a cosine schedule (the usual CIFAR-scale ResNet-18 recipe)."""
    config = resolve({}, dict(method="moco", data="fashion_mnist", arch=args.arch, image_size=args.size,
                              batch_size=args.batch))
    setup = prepare(dict(config))
    backbone = setup.backbone.module.train()
    apply_memory_format(backbone, wants_channels_last("auto", setup.device, backbone, setup.spec.image_size))
    head = torch.nn.Linear(setup.backbone.num_features, 10)
    params = list(backbone.parameters()) + list(head.parameters())
    peak_lr = 0.1 * args.batch / 256
    optimizer = torch.optim.SGD(params, lr=peak_lr, momentum=0.9, weight_decay=5e-4)
    batches = StepBatches(setup.source, view_transform(setup.spec, "crop_flip"), args.batch, seed=0)
    labels = torch.from_numpy(setup.source.labels())
    val = sets[1]

    def train_step(step, total):
        set_lr(optimizer, cosine_lr(step, total, peak_lr))
        view, _, index = batches[step]
        loss = F.cross_entropy(head(backbone(view)), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # calibration on throwaway copies of the state would cost as much as this: the first steps of
    # the real run are timed instead, and the step count fixed from them before the schedule matters
    start = time.perf_counter()
    for step in range(CALIBRATION_WINDOW):
        train_step(step, 10 ** 9)  # lr ~ peak for these few steps, as in the first steps of any cosine
        if step == 1:
            timed_from = time.perf_counter()
    seconds_per_step = (time.perf_counter() - timed_from) / (CALIBRATION_WINDOW - 2)
    steps = budget_steps(seconds_per_step, args)
    print(f"supervised: {seconds_per_step:.2f} s/step calibrated -> {steps} steps", flush=True)
    knn_every = args.knn_every or max(1, steps // args.curve_points)
    curve = []
    for step in range(CALIBRATION_WINDOW, steps):
        train_step(step, steps)
        if (step + 1) % knn_every == 0 or step + 1 == steps:
            curve.append((step + 1, knn_accuracy(backbone, setup.source, val, setup.spec,
                                                 train_images=args.curve_train, test_images=args.curve_test)))
            backbone.train()
    seconds = time.perf_counter() - start
    return {"train_seconds": seconds, "steps": steps, "calibrated_seconds_per_step": seconds_per_step,
            "peak_lr": peak_lr, "curve": curve, **evaluate(backbone, setup.spec, sets, args)}


def _classifier_top1(model, spec, test) -> float:
    from training.features import extract

    logits = extract(model, test, spec)
    return float((logits.argmax(dim=1) == torch.from_numpy(test.labels())).float().mean())


def chain(method, args, sets, work) -> dict:
    """Self-training (1,000 labels, the rest unlabelled; teacher = supervised on the 1,000, then 2
    student rounds) or SimCLR v2 distillation (SimCLR pretraining, fine-tuning on 10% of the labels,
    self-distillation): `--steps` per phase (or the per-method budget split over the phases). Reports the
    test top-1 of every phase's classifier and kNN/linear of the final backbone. `--selftrain-init`
    starts the students from that checkpoint (e.g. an exported MoCo run): the paper's comparison."""
    from training import phases
    from training.distill import teacher_from
    from training.views import InputSpec

    phases_count = 3
    steps = saved_steps(work, lambda: args.steps or budget_steps(calibrate_chain_step(method, args, work), args)
                        // phases_count)
    extra = (dict(labels=1000, iterations=2, unlabeled_images=args.unlabeled_images, init=args.selftrain_init,
                  teacher=args.selftrain_init if args.teacher_from_init else None)
             if method == "selftrain" else dict(label_fraction=0.1))
    config = resolve({}, dict(method=method, data="fashion_mnist", arch=args.arch, image_size=args.size, steps=steps,
                              batch_size=args.batch, checkpoint_every=min(steps, CHECKPOINT_EVERY), progress=False,
                              log_every=10, **extra))
    run = work / method
    start = time.perf_counter()
    final = pretrain(dict(config), run)
    seconds = time.perf_counter() - start
    test = sets[2]
    result = {"train_seconds": seconds, "steps_per_phase": steps, "recipe": config}
    names = ["teacher", "student_1", "student_2"] if method == "selftrain" else ["finetune", "distill"]
    for name in names:
        state = runfiles.load_checkpoint(runfiles.latest_checkpoint(run / name)[1])
        model, spec = (teacher_from(state)[0], InputSpec(**state["spec"])) if name == "finetune" else \
            phases.classifier_from(state)
        result[f"{name}_test_top1"] = _classifier_top1(model, spec, test)
    state = runfiles.load_checkpoint(final)
    model, spec = phases.classifier_from(state)
    return {**result, **evaluate(model.backbone, spec, sets, args)}


def few_labels(args, sets, work) -> dict:
    """Self-training's teacher recipe (supervised on its 1,000 labels, no noise, no unlabelled images) started
    from --selftrain-init, at --steps: the baseline of the students from that init. Without it, student vs
    teacher mixes what the init gives with what self-training adds on top (Zoph et al.'s comparison). From
    random init, the self-training row's own teacher is this baseline."""
    from training import phases
    from training.selftrain import teacher_config

    recipe = teacher_config(resolve({}, dict(
        method="selftrain", data="fashion_mnist", arch=args.arch, image_size=args.size, steps=args.steps,
        batch_size=args.batch, labels=1000, teacher=args.selftrain_init,
        checkpoint_every=min(args.steps, CHECKPOINT_EVERY), progress=False, log_every=10)))
    start = time.perf_counter()
    final = pretrain(dict(recipe), work / "teacher")
    seconds = time.perf_counter() - start
    model, spec = phases.classifier_from(runfiles.load_checkpoint(final))
    return {"train_seconds": seconds, "steps": args.steps, "recipe": recipe,
            "teacher_test_top1": _classifier_top1(model, spec, sets[2]), **evaluate(model.backbone, spec, sets, args)}


def calibrate_chain_step(method, args, work) -> float:
    """Seconds per step of the chain's supervised-style phases, measured like calibrate_ssl."""
    return calibrate_ssl("supervised", args, work, cpu_time=args.cpu_time)


def plot(results: dict, path: Path, args) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for name, result in results.items():
        if result.get("curve"):
            steps, values = zip(*result["curve"])
            axis.plot(steps, [100 * v for v in values], marker="o", label=name)
    axis.axhline(100 * results["random"]["knn_top1"], color="gray", linestyle="--",
                 label=f"random init ({args.eval_train} train / test set kNN)")
    axis.set_xlabel("training step")
    axis.set_ylabel("kNN top-1 on val subset (%)")
    axis.set_title(f"Fashion-MNIST, {args.arch} {args.size}px, batch {args.batch}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def steps_cell(result: dict) -> str:
    return f"{result['steps_per_phase']}/ph" if "steps_per_phase" in result else str(result.get("steps", 0))


NOT_SELF_SUPERVISED = ("random", "supervised", "selftrain", "distill", "fewlabels")  # rows that --set does not apply to


def row_label(method: str, args, variant: str) -> str:
    """A row's name in the results (and its run folder): the method, marked with a self-training init or --set."""
    if method == "selftrain" and args.teacher_from_init:
        return "selftrain-all-from-init"
    if method in ("selftrain", "fewlabels") and args.selftrain_init:
        return f"{method}-from-init"
    return method + ("" if method in NOT_SELF_SUPERVISED else variant)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="r18c")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per method")
    parser.add_argument("--steps", type=int, default=None, help="fixed steps per method instead of --minutes")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--knn-every", type=int, default=None)
    parser.add_argument("--curve-points", type=int, default=6, help="kNN evaluations along training")
    parser.add_argument("--curve-train", type=int, default=2000)
    parser.add_argument("--curve-test", type=int, default=500)
    parser.add_argument("--eval-train", type=int, default=5000)
    parser.add_argument("--eval-test", type=int, default=None, help="val/test images for the final evals")
    parser.add_argument("--probe-iterations", type=int, default=1000)
    parser.add_argument("--methods", default="random,moco,simclr,supervised",
                        help="any of random, moco, simclr, supervised, pic, rotation, selftrain, distill, fewlabels "
                             "(self-training's teacher recipe from --selftrain-init, at --steps: its students' baseline)")
    parser.add_argument("--unlabeled-images", type=int, default=0, help="selftrain: unlabelled images (0: all)")
    parser.add_argument("--selftrain-init", help="selftrain: the students' initialisation (zoo name or folder); "
                                                 "fewlabels: the baseline's")
    parser.add_argument("--teacher-from-init", action="store_true",
                        help="selftrain: the teacher too starts from --selftrain-init (default: random init); row "
                             "selftrain-all-from-init")
    parser.add_argument("--budget-reference", default=None,
                        help="a method already in the JSON (e.g. moco): its speed here vs its recorded speed converts "
                             "--minutes of the machine that made the JSON's rows into steps on this one")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a recipe value for the self-supervised methods (e.g. pic_stride=1217); the row is "
                             "named with it, e.g. pic[pic_stride=1217], and trains in its own run folder")
    parser.add_argument("--missing-only", action="store_true",
                        help="with --update: skip the rows the results already hold (a new checkout has no run "
                             "folders, so a finished row would otherwise be trained again)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other methods' results already in the JSON (rerun some methods only)")
    parser.add_argument("--results", default=str(RESULTS / "quality_fashion.json"), help="the JSON to write")
    parser.add_argument("--work", default=str(Path(__file__).resolve().parent / "_work" / "quality_fashion"))
    args = parser.parse_args()
    from training.config import parse_assignments

    args.overrides = parse_assignments(args.set)
    variant = "".join(f"[{key}={value}]" for key, value in sorted(args.overrides.items()))
    if variant and set(args.methods.split(",")) & set(NOT_SELF_SUPERVISED):
        parser.error("--set applies to the self-supervised methods only (moco, simclr, pic, rotation)")
    if args.teacher_from_init and not args.selftrain_init:
        parser.error("--teacher-from-init needs --selftrain-init")
    if "fewlabels" in args.methods.split(",") and not (args.selftrain_init and args.steps):
        parser.error("fewlabels needs --selftrain-init and --steps (the self-training row's steps per phase); "
                     "from random init, the selftrain row's teacher is that baseline")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = tuple(open_source("fashion_mnist", split) for split in ("train", "val", "test"))
    out = Path(args.results)
    results = json.loads(out.read_text())["results"] if args.update and out.exists() else {}
    RESULTS.mkdir(exist_ok=True)
    budget = machine_factor(args, results, work)
    args.machine_factor = budget["factor"]
    args.cpu_time = budget["reference"] is not None  # budgets converted from another machine: compare CPU time
    print(f"budget: {args.minutes} min x machine factor {args.machine_factor:.2f} ({budget})", flush=True)
    for method in args.methods.split(","):
        print(f"== {method}", flush=True)
        name = row_label(method, args, variant)
        if args.missing_only and name in results:
            print(f"{name}: already in {out}, skipped (--missing-only)", flush=True)
            continue
        if method == "random":
            config = resolve({}, dict(data="fashion_mnist", arch=args.arch, image_size=args.size))
            setup = prepare(dict(config))
            results[name] = evaluate(setup.backbone.module, setup.spec, sets, args)
        elif method == "supervised":
            results[name] = supervised(args, sets, work)
        elif method == "fewlabels":
            results[name] = few_labels(args, sets, work / name)
        elif method in ("selftrain", "distill"):
            results[name] = chain(method, args, sets, work / name)
        else:
            results[name] = self_supervised(method, args, sets, work / name)
        results[name]["budget"] = {**budget, "minutes_of_reference_machine": args.minutes}
        results[name]["args"] = vars(args)  # per method: with --update, methods come from different commands
        print(json.dumps({k: v for k, v in results[name].items() if k not in ("recipe", "loss", "args")}), flush=True)
        if args.update and out.exists():  # another command may have added its methods meanwhile
            results = {**json.loads(out.read_text())["results"], name: results[name]}
        runfiles.atomic_write_bytes(out, json.dumps({"results": results}, indent=2).encode())
    if "random" in results:
        plot(results, out.with_name(out.stem + "_knn.png"), args)
    # chains (selftrain, distill) train several phases: their steps are per phase, marked "/ph"
    print(f"{'':>11} {'kNN':>7} {'linear':>7} {'steps':>9} {'train s':>8}")
    for name, result in results.items():
        print(f"{name:>11} {100 * result['knn_top1']:6.2f}% {100 * result['linear_top1']:6.2f}% "
              f"{steps_cell(result):>9s} {result.get('train_seconds', 0):8.0f}")


if __name__ == "__main__":
    main()
