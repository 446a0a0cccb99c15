"""SimCLR v2's semi-supervised recipe (Chen et al. 2020, "Big Self-Supervised Models are Strong
Semi-Supervised Learners") as a chain of engine runs (training.runner.run_distill):

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

import torch
import torch.nn.functional as F
from torch import nn

from . import phases, runfiles
from .branch import OneBranch
from .supervised import Supervised, classifier, labelled_indices, source_targets, supervised_loss

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


class DistillStudent(OneBranch):
    name = "distill_student"
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

    def forward(self, view1: torch.Tensor, view2=None, indices: torch.Tensor | None = None) -> torch.Tensor:
        self.teacher.to(view1.device)
        with torch.no_grad():
            teacher_logits = self.teacher(view1)
        logits = self.run(view1)
        loss = distillation_loss(logits, teacher_logits, self.temperature)
        if self.labeled_weight:
            indices = indices.to(self.labelled.device)
            mine = self.labelled.index_select(0, indices)
            if bool(mine.any()):
                loss = loss + self.labeled_weight * supervised_loss(logits[mine], self.labels[indices[mine]])
        return loss


def build_student(config: dict, backbone, source) -> DistillStudent:
    teacher, classes = teacher_from(runfiles.load_checkpoint(config["teacher_checkpoint"]))
    labels = source_targets(source)
    count = max(classes, round(config["label_fraction"] * len(source)))
    return DistillStudent(backbone.module, backbone.num_features, teacher, classes, config["distill_temperature"],
                          labels, labelled_indices(source, count, config["seed"]), config["distill_labeled_weight"])
