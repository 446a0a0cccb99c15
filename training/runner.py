"""Every method's entry point: `pretrain(config, run_dir)`.

A single-network method (MoCo, SimCLR, PIC, rotation, supervised) is one engine run. A multi-phase
method is a chain of engine runs in one run directory (layout: training.phases), each phase resuming
on its own so the chain resumes where it stopped:

    selftrain  teacher (supervised on the labelled subset) -> pseudo-labels -> noised student, x `iterations`
    distill    SimCLR pretraining (or `teacher`, a SimCLR run) -> fine-tune on `label_fraction` of the
               labels -> distillation into a student on unlabelled images

The phases' models and losses live in their method files (selftrain.py, distill.py); this module only
sequences them, so the engine never needs to know about chains.
"""
from __future__ import annotations

from pathlib import Path

from . import dist, engine, phases, runfiles
from .config import ConfigError, resolve
from .distill import SIMCLR_KEYS
from .selftrain import pseudo_label, student_config, teacher_config, unlabelled_indices
from .supervised import labelled_indices


def pretrain(config: dict, run_dir: str | Path) -> Path:
    """Train (or resume) into run_dir; returns the final checkpoint path."""
    chain = CHAINS.get(config["method"])
    if chain is None:
        return engine.pretrain(config, run_dir)
    run_dir = Path(run_dir)
    # the whole chain, not only its phases: between phases (pseudo-labelling) a second process would start too
    with engine.claimed_run_dir(run_dir):
        return chain(config, run_dir)


# ---------------------------------------------------------------- chain plumbing
def open_chain(config: dict, run_dir: Path) -> dict | None:
    """Checks the run directory (same rules as a single run); returns the finished chain's state, or None."""
    dist.init_from_env(engine.pick_device(config))
    finished = engine.open_run_dir(run_dir, config)
    dist.barrier()
    if dist.rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        runfiles.write_config(run_dir, config)
    dist.barrier()
    return finished


def run_phase(phase_config: dict, run_dir: Path, name: str) -> Path:
    return engine.pretrain(dict(phase_config), run_dir / name)


# ---------------------------------------------------------------- self-training
def run_selftrain(config: dict, run_dir: Path) -> Path:
    from .data import open_source

    finished = open_chain(config, run_dir)
    if finished is not None:
        return finished["path"]
    source = open_source(config["data"], config["split"], config["domain"])
    if source.multi_label:
        raise ConfigError("self-training is implemented for single-label data; "
                          "for multi-label data use --method supervised or a self-supervised method")
    labelled = labelled_indices(source, config["labels"], config["seed"])
    unlabelled = unlabelled_indices(source, labelled, config["unlabeled_images"], config["seed"])
    pseudo_share = config["batch_size"] - config["batch_size"] // (1 + config["unlabeled_ratio"])
    teacher = run_phase(teacher_config(config), run_dir, "teacher")
    lineage = [phases.phase_record("teacher", "teacher", teacher)]
    for round_index in range(1, config["iterations"] + 1):
        pseudo_file = run_dir / f"pseudo_{round_index}.pt"
        pseudo = phases.hand_over(pseudo_file, lambda: pseudo_label(teacher, source, unlabelled, config, pseudo_share))
        if dist.rank() == 0:
            runfiles.MetricsLog(run_dir).write(phase=f"pseudo_{round_index}",
                                               **{k: v.tolist() for k, v in pseudo["stats"].items()})
        teacher = run_phase(student_config(config, pseudo_file), run_dir, f"student_{round_index}")
        if round_index < config["iterations"]:
            lineage.append(phases.phase_record("teacher", f"student_{round_index}", teacher))
    lineage.append(phases.init_record(config))
    return phases.finish_chain(config, run_dir, teacher, lineage)


# ---------------------------------------------------------------- SimCLR v2 distillation
def _simclr_checkpoint(config: dict, run_dir: Path) -> Path:
    """The SimCLR run the recipe fine-tunes: `teacher` (a run directory) or this chain's own first phase."""
    if config["teacher"]:
        teacher = Path(config["teacher"])
        latest = runfiles.latest_checkpoint(teacher) if teacher.is_dir() else None
        if latest is None:
            raise ConfigError(f"teacher {teacher} is not a SimCLR run directory with checkpoints "
                              f"(python -m training pretrain --method simclr ...)")
        if runfiles.load_checkpoint(latest[1])["config"]["method"] != "simclr":
            raise ConfigError(f"teacher {teacher} is not a SimCLR run; the recipe fine-tunes from its head's first layer")
        return latest[1]
    simclr = resolve({}, {"method": "simclr", **{k: config[k] for k in SIMCLR_KEYS}})
    return run_phase(simclr, run_dir, "pretrain")


def run_distill(config: dict, run_dir: Path) -> Path:
    finished = open_chain(config, run_dir)
    if finished is not None:
        return finished["path"]
    simclr = _simclr_checkpoint(config, run_dir)
    teacher_arch = runfiles.load_checkpoint(simclr)["arch"]["arch"]
    finetune = run_phase({**config, "method": "distill_finetune", "arch": teacher_arch, "init": None,
                          "steps": config["finetune_steps"] or config["steps"], "finetune_from": str(simclr)},
                         run_dir, "finetune")
    student = run_phase({**config, "method": "distill_student", "init": None,
                         "arch": config["student_arch"] or teacher_arch, "teacher_checkpoint": str(finetune)},
                        run_dir, "distill")
    lineage = [phases.phase_record("pretrain", "pretrain", simclr, backbone_prefix="encoder.backbone."),
               phases.phase_record("teacher", "finetune", finetune), phases.init_record({"init": None})]
    return phases.finish_chain(config, run_dir, student, lineage)


CHAINS = {"selftrain": run_selftrain, "distill": run_distill}
