"""SimCLR v2's semi-supervised recipe (Chen et al. 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners") as a chain of engine runs (training.phases):

    pretrain  SimCLR v2 on the unlabelled images (skipped when `teacher` names a SimCLR run directory)
    finetune  from the projection head's first layer: backbone + head[0] (Linear, BN, ReLU) + a new
              linear classifier, trained on `label_fraction` of the labels (1% or 10% in the paper)
    distill   a student (`student_arch`, default the teacher's: self-distillation) from random init on
              all training images without labels: loss = -sum_c p_T(c|x; tau) log p_S(c|x; tau) with
              the fine-tuned teacher's temperature-softened predictions (tau = `distill_temperature`),
              plus `distill_labeled_weight` x CE on the labelled images when > 0
The student's backbone exports as `distill-<domain>-<arch>`; its lineage names the SimCLR
pretraining, the fine-tuned teacher and the student's random initialisation.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import phases, runfiles
from .supervised import IndexBatches, Supervised, classifier, labelled_indices, source_targets, supervised_loss

SIMCLR_KEYS = ("data", "split", "domain", "arch", "channels", "image_size", "crop_pct", "steps", "batch_size",
               "seed", "num_workers", "checkpoint_every", "keep_checkpoints", "log_every", "device",
               "augment_device", "amp", "channels_last", "compile", "progress")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over the batch of the cross-entropy between the softened teacher and student distributions."""
    upcast = (lambda x: x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)
    targets = F.softmax(upcast(teacher_logits) / temperature, dim=1)
    return -(targets * F.log_softmax(upcast(student_logits) / temperature, dim=1)).sum(dim=1).mean()


def finetune_model(backbone: nn.Module, simclr_state: dict, classes: int) -> nn.Sequential:
    """Backbone + the SimCLR projection head's first block + a new linear classifier, weights from the
    SimCLR checkpoint (keys encoder.backbone.*, encoder.head.0.*)."""
    weights = simclr_state["method"]
    first = {k[len("encoder.head.0."):]: v for k, v in weights.items() if k.startswith("encoder.head.0.")}
    hidden = first["0.weight"].shape[0]
    block = nn.Sequential(nn.Linear(first["0.weight"].shape[1], hidden, bias="0.bias" in first),
                          nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
    block.load_state_dict(first)
    backbone.load_state_dict({k[len("encoder.backbone."):]: v for k, v in weights.items()
                              if k.startswith("encoder.backbone.")})
    return nn.Sequential(OrderedDict(backbone=backbone, head=nn.Sequential(block, nn.Linear(hidden, classes))))


def build_finetune(config: dict, backbone, source) -> Supervised:
    simclr_state = runfiles.load_checkpoint(config["finetune_from"])
    labels = source_targets(source)
    count = max(int(labels.max()) + 1, round(config["label_fraction"] * len(source)))
    method = Supervised(backbone.module, backbone.num_features, labels,
                        labelled=labelled_indices(source, count, config["seed"]))
    method.model = finetune_model(backbone.module, simclr_state, int(labels.max()) + 1)  # the head[0] variant
    return method


def teacher_from(state: dict) -> tuple[nn.Module, int]:
    backbone = phases.backbone_of(state)
    weights = {k[len("model."):]: v for k, v in state["method"].items() if k.startswith("model.")}
    hidden, classes = weights["head.0.0.weight"].shape[0], weights["head.1.weight"].shape[0]
    block = nn.Sequential(nn.Linear(backbone.num_features, hidden, bias="head.0.0.bias" in weights),
                          nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))
    model = nn.Sequential(OrderedDict(backbone=backbone.module, head=nn.Sequential(block, nn.Linear(hidden, classes))))
    model.load_state_dict(weights)
    model.requires_grad_(False)
    return model.eval(), classes


class DistillStudent(nn.Module):
    name = "distill_student"
    views = 1
    uses_indices = True

    def __init__(self, backbone: nn.Module, feature_dim: int, teacher: nn.Module, classes: int, temperature: float,
                 labels: torch.Tensor, labelled, labeled_weight: float):
        super().__init__()
        self.model = classifier(backbone, feature_dim, classes)
        object.__setattr__(self, "teacher", teacher)  # frozen and not part of the run's state
        self.temperature, self.labeled_weight = temperature, labeled_weight
        mask = torch.zeros(len(labels), dtype=torch.bool)
        mask[torch.as_tensor(labelled, dtype=torch.long)] = True
        self.register_buffer("labels", labels, persistent=False)
        self.register_buffer("labelled", mask, persistent=False)
        self._runner = None

    @property
    def backbone(self) -> nn.Module:
        return self.model.backbone

    def trainable_module(self) -> nn.Module:
        return self.model

    def set_runner(self, runner: nn.Module) -> None:
        object.__setattr__(self, "_runner", runner)

    def reset_key_encoder(self) -> None:
        pass

    def after_backward(self) -> None:
        pass

    def forward(self, view1: torch.Tensor, view2=None, indices: torch.Tensor | None = None) -> torch.Tensor:
        self.teacher.to(view1.device)
        with torch.no_grad():
            teacher_logits = self.teacher(view1)
        logits = (self._runner or self.model)(view1)
        loss = distillation_loss(logits, teacher_logits, self.temperature)
        if self.labeled_weight:
            indices = indices.to(self.labelled.device)
            mine = self.labelled.index_select(0, indices)
            if bool(mine.any()):
                loss = loss + self.labeled_weight * supervised_loss(logits[mine], self.labels[indices[mine]])
        return loss

    def head_state_dict(self) -> dict:
        return {f"head.{k}": v for k, v in self.model.head.state_dict().items()}


def build_student(config: dict, backbone, source) -> DistillStudent:
    teacher, classes = teacher_from(runfiles.load_checkpoint(config["teacher_checkpoint"]))
    labels = source_targets(source)
    count = max(classes, round(config["label_fraction"] * len(source)))
    return DistillStudent(backbone.module, backbone.num_features, teacher, classes, config["distill_temperature"],
                          labels, labelled_indices(source, count, config["seed"]), config["distill_labeled_weight"])


def _simclr_checkpoint(config: dict, run_dir: Path) -> Path:
    from .config import ConfigError, resolve

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
    return phases.run_phase(simclr, run_dir, "pretrain")


def run(config: dict, run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    finished = phases.open_chain(config, run_dir)
    if finished is not None:
        return finished["path"]
    simclr = _simclr_checkpoint(config, run_dir)
    simclr_state = runfiles.load_checkpoint(simclr)
    teacher_arch = simclr_state["arch"]["arch"]
    finetune = phases.run_phase({**config, "method": "distill_finetune", "arch": teacher_arch, "init": None,
                                 "steps": config["finetune_steps"] or config["steps"],
                                 "finetune_from": str(simclr)}, run_dir, "finetune")
    student = phases.run_phase({**config, "method": "distill_student", "init": None,
                                "arch": config["student_arch"] or teacher_arch,
                                "teacher_checkpoint": str(finetune)}, run_dir, "distill")
    lineage = [phases.phase_record("pretrain", "pretrain", simclr, backbone_prefix="encoder.backbone."),
               phases.phase_record("teacher", "finetune", finetune), phases.init_record({"init": None})]
    return phases.finish_chain(config, run_dir, student, lineage)
