"""Run checkpoint -> zoo checkpoint folder (zoo.checkpoint format), which zoo.load reads directly."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from zoo.checkpoint import (CARD, CONFIG, META, WEIGHTS, dump_json, read_json, save_state_dict, timm_config,
                            write_checkpoint)
from zoo.integrity import sha256_file
from zoo.names import ModelName, check_name_agrees, format_name, parse_name

from . import runfiles
from .runfiles import atomic_write_bytes

HEADS_FILE = "heads.safetensors"
_PREFIX = {"moco": ("query.backbone.", "query.head."), "simclr": ("encoder.backbone.", "encoder.head."),
           "pic": ("encoder.backbone.", "encoder.head."), "rotation": ("encoder.backbone.", "encoder.head."),
           "supervised": ("model.backbone.", "model.head."), "selftrain": ("model.backbone.", "model.head."),
           "distill": ("model.backbone.", "model.head.")}
# method -> zoo strategy (zoo.names.STRATEGIES) when the name is not the method's own
_STRATEGY = {"supervised": "sup"}


def _pick_checkpoint(run_dir: Path, step: int | None) -> Path:
    if step is not None:
        path = runfiles.checkpoint_path(run_dir, step)
        if not path.exists():
            kept = [s for s, _ in runfiles.list_checkpoints(run_dir)]
            raise FileNotFoundError(f"{run_dir} has no checkpoint for step {step}; kept steps: {kept}")
        return path
    latest = runfiles.latest_checkpoint(run_dir)
    if latest is None:
        raise FileNotFoundError(f"{run_dir} has no checkpoints (is it a training run directory?)")
    return latest[1]


def strategy_of(config: dict) -> str:
    if config.get("init") and config["method"] == "moco":  # HPT is MoCo continued from a base
        return "hptbn" if config.get("trainable") == "bn" else "hpt"
    return _STRATEGY.get(config["method"], config["method"])


def _agreeing(name: str, strategy: str, domain: str, config: dict, arch: dict) -> tuple[str, str]:
    """The strategy and domain a requested name may claim for this run, or NameMismatchError.

    MoCo v2 from random init is the study's Target strategy, so a `moco` run may be named `target-*`; data
    without a known domain (a plain image folder) takes the name's domain."""
    parsed = parse_name(name)
    if strategy == "moco" and parsed.strategy == "target" and not config.get("init"):
        strategy = "target"
    if domain == "custom":
        domain = parsed.domain
    check_name_agrees(name, strategy=strategy, domain=domain, arch=arch["arch"], architecture=arch["timm_arch"],
                      where=f"the training run ({config['method']}, {'init ' + str(config['init']) if config.get('init') else 'random init'})")
    return strategy, domain


def _sha_of(state: dict) -> str:
    with tempfile.TemporaryDirectory() as folder:  # the exact bytes write_checkpoint will write
        path = Path(folder) / WEIGHTS
        save_state_dict(state, path)
        return sha256_file(path)


def export(run_dir: str | Path, out_dir: str | Path, step: int | None = None, heads: bool = False,
           name: str | None = None, license: str = "Apache-2.0", evaluations: list[dict] | None = None) -> Path:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    state = runfiles.load_checkpoint(_pick_checkpoint(run_dir, step))
    config, spec, arch = state["config"], state["spec"], state["arch"]
    backbone_prefix, head_prefix = _PREFIX[config["method"]]
    weights = {k[len(backbone_prefix):]: v for k, v in state["method"].items() if k.startswith(backbone_prefix)}
    domain = (state["data"].get("domain") or "custom")
    steps = int(state["step"])
    strategy = strategy_of(config)
    if name:
        strategy, domain = _agreeing(name, strategy, domain, config, arch)
        name = format_name(parse_name(name))  # canonical spelling (aliases such as `kids` are accepted)
    name = name or format_name(ModelName(strategy, domain, arch["arch"], steps=steps))
    pretrained_cfg = {"input_size": (spec["channels"], spec["image_size"], spec["image_size"]),
                      "mean": tuple(spec["mean"]), "std": tuple(spec["std"]),
                      "interpolation": spec["interpolation"], "crop_pct": spec["crop_pct"]}
    timm_cfg = timm_config(arch["timm_arch"], 0, arch["num_features"], pretrained_cfg, arch["model_args"])
    lineage = []
    if state.get("init"):
        init = {k: v for k, v in state["init"].items() if k != "pretrained_cfg"}
        lineage.append({"role": "base", **init})
    lineage += state.get("lineage", [])  # a chain's phases (training.phases): teachers, initialisation
    lineage.append({"role": "target", "name": name, "domain": domain, "method": config["method"], "steps": steps,
                    "sha256": _sha_of(weights)})
    data = {**state["data"], "images_seen": steps * config["batch_size"]}
    meta = {"name": name, "strategy": strategy, "method": config["method"], "arch": arch["arch"], "domain": domain,
            "steps": steps, "hyperparameters": config, "data": data, "lineage": lineage,
            "evaluations": list(evaluations or []), "license": license, "license_id": license.lower(),
            "summary": _summary(strategy, config, domain, arch["arch"], steps),
            "source": f"exported from training run {run_dir.name} (step {steps})"}
    if not heads:
        return write_checkpoint(out_dir, weights, timm_cfg, meta)
    head_state = {k[len(head_prefix):]: v for k, v in state["method"].items() if k.startswith(head_prefix)}
    with tempfile.TemporaryDirectory() as folder:
        head_file = Path(folder) / HEADS_FILE
        save_state_dict(head_state, head_file)
        meta["heads"] = {"file": HEADS_FILE, "sha256": sha256_file(head_file), "size": os.path.getsize(head_file),
                         "prefix_in_training": head_prefix}
        # build the folder beside the target, add the heads, then rename: still one atomic appearance
        staging = out_dir.parent / f".{out_dir.name}.heads"
        write_checkpoint(staging, weights, timm_cfg, meta)
        os.replace(head_file, staging / HEADS_FILE)
    if out_dir.exists() and not any(out_dir.iterdir()):
        out_dir.rmdir()
    os.replace(staging, out_dir)
    return out_dir


def _summary(strategy, config, domain, arch, steps) -> str:
    start = f"initialised from {config['init']}" if config.get("init") else "from random initialisation"
    trained = "BatchNorm parameters only" if config.get("trainable") == "bn" else "all parameters"
    return (f"{config['method']} pretraining of {arch} on {domain} for {steps} steps (batch {config['batch_size']}), "
            f"{start}, training {trained}. Backbone only; heads are not included unless noted.")


def add_evaluation(checkpoint_dir: str | Path, evaluation: dict) -> dict:
    """Append an evaluation record to an exported checkpoint's zoo.json and regenerate its card."""
    from zoo.cards import render_card

    checkpoint_dir = Path(checkpoint_dir)
    meta, config = read_json(checkpoint_dir / META), read_json(checkpoint_dir / CONFIG)
    meta["evaluations"] = [e for e in meta.get("evaluations", [])
                           if (e.get("protocol"), e.get("data"), e.get("split")) !=
                           (evaluation["protocol"], evaluation["data"], evaluation["split"])] + [evaluation]
    atomic_write_bytes(checkpoint_dir / META, dump_json(meta).encode())
    atomic_write_bytes(checkpoint_dir / CARD, render_card(meta, config).encode())
    return meta
