"""`python -m training {pretrain,export,evaluate}`.

    python -m training pretrain --method moco --data fashion_mnist --arch r18c --steps 2000 --run-dir runs/moco
    python -m training pretrain --recipe recipes/moco_fashion_r18c.yaml --run-dir runs/moco --set lr=0.1
    python -m training export runs/moco exported/moco-fashion_mnist-r18c
    python -m training evaluate exported/moco-fashion_mnist-r18c --protocol linear --data fashion_mnist
Exit codes: 0 done, 2 bad input (config, data, paths), 3 non-finite loss, 143 stopped by SIGTERM
(a checkpoint was written; the same command resumes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

PRETRAIN_FLAGS = {  # flag -> (type, help); each maps to the recipe key of the same name
    "method": (str, "moco, simclr, pic, rotation, supervised, selftrain or distill"), "data": (str, "offline set, image folder or hf:<id>"),
    "domain": (str, "domain for mean/std/size when --data is a folder or Hub id"),
    "arch": (str, "r18c, r18, r50, mnv2"), "steps": (int, "training iterations"),
    "batch_size": (int, "global batch (split over processes)"), "lr": (float, "base lr (scaled by lr_scaling)"),
    "init": (str, "start from this zoo checkpoint (name or exported folder): fresh heads, key = query"),
    "trainable": (str, "all or bn (only BatchNorm parameters train)"),
    "image_size": (int, "training resolution (default: the domain's)"), "seed": (int, "random seed"),
    "num_workers": (int, "data loader processes"), "checkpoint_every": (int, "steps between checkpoints"),
    "knn_every": (int, "steps between kNN monitor evaluations (0: off)"), "device": (str, "auto, cpu or cuda"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    pre = commands.add_parser("pretrain", help="self-supervised pretraining (resumes if RUN has checkpoints)")
    # --run-dir (not only --run): torchrun's own parser would take "--run" as an abbreviation of --run-path
    pre.add_argument("--run-dir", "--run", dest="run", required=True,
                     help="run directory (config, checkpoints, metrics)")
    pre.add_argument("--recipe", help="YAML or TOML recipe file")
    for flag, (kind, text) in PRETRAIN_FLAGS.items():
        pre.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, help=text)
    pre.add_argument("--symmetric", action="store_true", default=None, help="MoCo symmetric loss")
    pre.add_argument("--channels", help="auto, 1 or 3 (gray replicated)")
    pre.add_argument("--no-progress", dest="progress", action="store_false", default=None)
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any recipe key")

    exp = commands.add_parser("export", help="run directory -> zoo checkpoint folder")
    exp.add_argument("run_dir")
    exp.add_argument("out_dir")
    exp.add_argument("--step", type=int, help="export this step's checkpoint (default: the latest)")
    exp.add_argument("--heads", action="store_true", help="also write the projection heads (heads.safetensors)")
    exp.add_argument("--name", help="zoo name (default: {strategy}-{domain}-{arch}-{steps})")
    exp.add_argument("--license", default="Apache-2.0")

    ev = commands.add_parser("evaluate", help="evaluation protocols on a checkpoint")
    ev.add_argument("model", help="exported folder, zoo name, or random:<arch> for a random-init baseline")
    ev.add_argument("--protocol", choices=("knn", "linear", "semi", "finetune"), required=True,
                    help="finetune: all training labels, the study's 2,500-iteration schedule")
    ev.add_argument("--data", required=True)
    ev.add_argument("--domain")
    ev.add_argument("--train-images", type=int, help="subsample the training split (CPU budgets)")
    ev.add_argument("--eval-images", type=int, help="subsample val/test for knn/semi")
    ev.add_argument("--iterations", type=int, help="linear: 5000 in the study; semi: 2500")
    ev.add_argument("--lrs", type=lambda s: tuple(float(x) for x in s.split(",")), help="comma-separated grid")
    ev.add_argument("--labels", type=int, default=1000, help="semi: labelled images")
    ev.add_argument("--batch-size", type=int)
    ev.add_argument("--out", help="also write the record to this JSON file")
    ev.add_argument("--record", action="store_true", help="append the record to the exported folder's zoo.json")
    h = commands.add_parser("hpt", help="an HPT-study strategy (base, target, hpt, hptbn, chains) -> zoo checkpoint")
    h.add_argument("--recipe", help="a recipes/hpt/*.yaml file (the study's settings)")
    h.add_argument("--strategy", choices=("base", "target", "hpt", "hptbn"))
    h.add_argument("--target", help="target domain (see zoo/domains.py)")
    h.add_argument("--source", help="chain through this source domain first (base -> source -> target)")
    h.add_argument("--base", help="zoo name or folder to start from (default: the arch's study base)")
    h.add_argument("--arch", help="r50 (the study), mnv2, r18")
    h.add_argument("--out", help="where the zoo checkpoint goes")
    h.add_argument("--data", action="append", metavar="DOMAIN=SPEC",
                   help="where a domain's images are (folder or hf:<id>); default $ZOO_DATA/<domain>")
    for flag, kind in (("steps", int), ("batch_size", int), ("lr", float), ("image_size", int), ("queue_size", int),
                       ("seed", int)):
        h.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind)
    h.add_argument("--device")
    h.add_argument("--set", type=lambda item: dict([item.split("=", 1)]), action="append", metavar="KEY=VALUE")
    h.add_argument("--write-matrix", metavar="FOLDER", help="write the study's 67 recipes to FOLDER and stop")
    p = commands.add_parser("prepare", help="an official dataset download -> a prepared dataset (Arrow + manifest)")
    p.add_argument("domain", help="one of the 16 HPT targets (see the README's domain table)")
    p.add_argument("download", help="the folder holding the extracted official download")
    p.add_argument("--out", help="where the prepared dataset goes (default: $ZOO_DATA/<domain>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the splits the study did not publish")
    p.add_argument("--on-bad", choices=("skip", "fail"), default="skip", help="undecodable images: skip and report, or stop")
    p.add_argument("--workers", type=int, default=1, help="processes decoding images for the check")
    p.add_argument("--force", action="store_true", help="replace an earlier prepared dataset at --out")
    p.add_argument("--option", action="append", metavar="KEY=VALUE", help="chexpert: uncertain=zeros|ones; xview: chip=512")
    return parser


def main(argv=None) -> int:
    import shlex

    argv = sys.argv[1:] if argv is None else list(argv)
    args = _parser().parse_args(argv)
    args.command_line = "python -m training " + shlex.join(argv)  # recorded in evaluation records
    from zoo.errors import ZooError

    from .config import ConfigError
    from .engine import NonFiniteLossError, Preempted, PREEMPTED_EXIT_CODE
    from .offline_sets import DataNotFoundError
    from .runfiles import RunFileError
    try:
        return {"pretrain": _pretrain, "export": _export, "evaluate": _evaluate, "hpt": _hpt,
                "prepare": _prepare}[args.command](args)
    except (ConfigError, DataNotFoundError, ZooError, RunFileError, FileNotFoundError, FileExistsError,
            ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 3
    except Preempted as stop:
        print(str(stop), file=sys.stderr)
        return PREEMPTED_EXIT_CODE


def _pretrain(args) -> int:
    from .config import parse_assignments, read_recipe, resolve
    from .runner import pretrain

    overrides = {key: getattr(args, key) for key in PRETRAIN_FLAGS}
    overrides.update(symmetric=args.symmetric, progress=args.progress,
                     channels=int(args.channels) if args.channels and args.channels.isdigit() else args.channels)
    overrides.update(parse_assignments(args.set))
    config = resolve(read_recipe(args.recipe) if args.recipe else {}, overrides)
    path = pretrain(config, args.run)
    print(f"finished: {path}")
    return 0


def _hpt(args) -> int:
    from .config import parse_assignments
    from .hpt import main as hpt_main

    args.set = parse_assignments([f"{k}={v}" for item in (args.set or []) for k, v in item.items()])
    if not args.write_matrix and not args.out:
        raise ValueError("--out is required (where the zoo checkpoint is written)")
    return hpt_main(args)


def _prepare(args) -> int:
    from .prepare import main as prepare_main

    return prepare_main(args)


def _export(args) -> int:
    from .export import export

    out = export(args.run_dir, args.out_dir, step=args.step, heads=args.heads, name=args.name, license=args.license)
    print(f"exported {out}")
    return 0


def _evaluate(args) -> int:
    from .evaluate_cli import run_evaluation

    record = run_evaluation(args)
    text = json.dumps(record, indent=2, sort_keys=True)
    print(text)
    if args.out:
        from .runfiles import atomic_write_bytes
        atomic_write_bytes(Path(args.out), (text + "\n").encode())
    if args.record:
        from .export import add_evaluation
        add_evaluation(args.model, record)
    return 0
