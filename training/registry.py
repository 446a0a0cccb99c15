"""Which training methods exist, the recipe keys only they read, and their published defaults.

training.config merges this in: a method's own keys enter a resolved config only for that method
(a MoCo run's config.yaml is unchanged by PIC's keys, so older runs still resume), and a key of
another method is refused with the method it belongs to. Plain data only: config imports it early.
"""
from __future__ import annotations

METHODS = ("moco", "simclr", "pic", "rotation", "supervised", "selftrain", "distill")  # grows as methods land: rotation, supervised, selftrain, distill

# method -> {key: default} for keys only that method reads
METHOD_KEYS = {
    "pic": {"pic_window": 0,  # D: images per window; 0 = N/10 (ImageNet: 131,072 of 1.28M)
            "pic_stride": 0,  # S: the next window starts S later; 0 = D/8 (ImageNet: 16,384)
            "pic_negatives": 65536,  # K: recently seen instances in the softmax besides the batch
            "pic_weight_lr_scale": 1.0},  # classification weights' lr = lr x this
    "supervised": {"label_smoothing": 0.0, "dropout": 0.0, "drop_path": 0.0, "labels": 0,  # labels 0 = all
                   "schedule": "cosine",  # or "steps": x0.1 at 1/3 and 2/3 (the HPT study's fine-tuning)
                   "head_lr_scale": 1.0},  # the head's lr = lr x this (fine-tuning: 100)
    "rotation": {},
    "selftrain": {"labels": 1000,  # labelled images (class-covering subset); the rest are unlabelled
                  "unlabeled_images": 0,  # 0 = every other training image; else a fixed random subset
                  "teacher": None,  # zoo name/folder the teacher starts from (default: random init)
                  "teacher_steps": 0,  # 0 = steps (the teacher phase as long as a student phase)
                  "iterations": 1,  # student rounds; student i teaches round i+1
                  "pseudo": "hard",  # hard (argmax) or soft (teacher probabilities at pseudo_temperature)
                  "pseudo_temperature": 1.0, "pseudo_threshold": 0.3,  # drop pseudo-labels below this confidence
                  "class_balance": True,  # same number of pseudo-labelled images per class (top-confidence)
                  "unlabeled_ratio": 1,  # unlabelled:labelled images per batch (loss weight too)
                  "label_smoothing": 0.1, "dropout": 0.2, "drop_path": 0.2, "randaugment_ops": 2,
                  "randaugment_magnitude": 9},
    "distill": {"teacher": None,  # a SimCLR run directory; None = pretrain one in the chain's first phase
                "label_fraction": 0.1,  # 1% or 10% in the paper
                "finetune_steps": 0,  # 0 = steps
                "distill_temperature": 1.0, "distill_labeled_weight": 0.0,  # optional labelled CE on top
                "student_arch": None},  # None = the teacher's arch (self-distillation)
}

# (method, scale) -> published defaults over training.config.COMMON
METHOD_DEFAULTS = {
    # PIC (Cao et al. 2020): SGD lr 0.03 x batch/256, momentum 0.9, wd 1e-4, cosine, tau 0.2, MLP head
    ("pic", "imagenet"): {"temperature": 0.2, "augment": "moco"},
    ("pic", "small"): {"lr": 0.06, "lr_reference_batch": 512, "weight_decay": 5e-4, "temperature": 0.2,
                       "proj_hidden": 512, "pic_negatives": 4096, "augment": "moco_small"},
    # ResNet recipe: SGD lr 0.1 x batch/256, momentum 0.9, wd 1e-4 (5e-4 at CIFAR scale), cosine, crop + flip
    ("supervised", "imagenet"): {"lr": 0.1, "augment": "crop_flip"},
    ("supervised", "small"): {"lr": 0.1, "weight_decay": 5e-4, "augment": "crop_flip"},
    # rotation (Gidaris et al. 2018): 4-way classification of 0/90/180/270 degree copies, SGD 0.1
    ("rotation", "imagenet"): {"lr": 0.1, "weight_decay": 5e-4, "augment": "crop_flip"},
    ("rotation", "small"): {"lr": 0.1, "weight_decay": 5e-4, "augment": "crop_flip"},
    ("selftrain", "imagenet"): {"lr": 0.1, "augment": "crop_flip"},
    ("selftrain", "small"): {"lr": 0.1, "weight_decay": 5e-4, "augment": "crop_flip"},
    # the distill run's own phase-1 SimCLR pretraining (when no teacher is given) uses the simclr defaults
    ("distill", "imagenet"): {"lr": 0.1, "augment": "crop_flip", "temperature": 0.1},
    ("distill", "small"): {"lr": 0.1, "weight_decay": 5e-4, "augment": "crop_flip", "temperature": 0.5},
}

CHOICES = {"pseudo": ("hard", "soft"), "schedule": ("cosine", "steps")}


def owner_of(key: str) -> str | None:
    return next((method for method, keys in METHOD_KEYS.items() if key in keys), None)


def validate(config: dict) -> list[str]:
    """Problems with a method's own keys (empty when fine)."""
    problems = []
    method = config["method"]
    if method == "pic":
        for key in ("pic_window", "pic_stride"):
            if not isinstance(config[key], int) or config[key] < 0:
                problems.append(f"{key} must be an integer >= 0 (0: automatic), not {config[key]!r}")
        if not isinstance(config["pic_negatives"], int) or config["pic_negatives"] < 0:
            problems.append(f"pic_negatives must be an integer >= 0, not {config['pic_negatives']!r}")
    if "schedule" in config and config["schedule"] not in CHOICES["schedule"]:
        problems.append(f"schedule must be one of {CHOICES['schedule']}, not {config['schedule']!r}")
    if method in ("supervised", "selftrain"):
        for key in ("label_smoothing", "dropout", "drop_path"):
            if not 0 <= config[key] < 1:
                problems.append(f"{key} must be in [0, 1), not {config[key]!r}")
    if method == "selftrain":
        if config["pseudo"] not in CHOICES["pseudo"]:
            problems.append(f"pseudo must be one of {CHOICES['pseudo']}, not {config['pseudo']!r}")
        if not isinstance(config["iterations"], int) or config["iterations"] < 1:
            problems.append(f"iterations must be a positive integer, not {config['iterations']!r}")
        if not isinstance(config["unlabeled_ratio"], int) or config["unlabeled_ratio"] < 1:
            problems.append(f"unlabeled_ratio must be a positive integer, not {config['unlabeled_ratio']!r}")
        if not 0 <= config["pseudo_threshold"] < 1:
            problems.append(f"pseudo_threshold must be in [0, 1), not {config['pseudo_threshold']!r}")
    if method in ("selftrain", "supervised") and (not isinstance(config["labels"], int) or config["labels"] < 0):
        problems.append(f"labels must be an integer >= 0, not {config['labels']!r}")
    if method == "distill" and not 0 < config["label_fraction"] <= 1:
        problems.append(f"label_fraction must be in (0, 1], not {config['label_fraction']!r}")
    return problems
