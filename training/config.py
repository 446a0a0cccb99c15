"""Recipes: every hyperparameter of a run, with defaults per method and scale, validated up front.

Precedence: method/scale defaults < recipe file (YAML or TOML) < command-line values. The
resolved dict is what the run directory keeps (config.yaml) and what export records.
"""
from __future__ import annotations

import difflib
import math
import json
from pathlib import Path

from . import registry


class ConfigError(ValueError):
    """A recipe or command line that cannot run; the message says which key and why."""


COMMON = {
    "method": "moco", "data": None, "split": "train", "domain": None, "arch": "r18c",
    "init": None,  # zoo name or exported folder: start from that backbone (fresh heads)
    "trainable": "all",  # "all" or "bn" (HPT-BN: only BatchNorm affine parameters train)
    "channels": "auto", "image_size": None, "crop_pct": None,
    "steps": 2000, "batch_size": 256,
    "optimizer": "sgd", "lr": 0.03, "lr_scaling": "linear", "lr_reference_batch": 256,
    "momentum": 0.9, "weight_decay": 1e-4, "exclude_bn_bias": False, "warmup_steps": 0,
    "temperature": 0.2, "proj_dim": 128, "proj_hidden": 2048,
    "queue_size": 65536, "ema_momentum": 0.999, "symmetric": False, "bn_splits": 1,
    "head_layers": 3, "augment": "moco",
    "seed": 0, "num_workers": 0, "checkpoint_every": 500, "keep_checkpoints": 2, "log_every": 10,
    "knn_every": 0, "knn_k": 200, "knn_t": 0.1, "knn_train_images": 10000, "knn_test_images": 2000,
    "device": "auto", "augment_device": "auto", "amp": "auto", "channels_last": "auto", "compile": False, "clip_grad": None,
    "progress": True,
}

# Published settings; "small" = the CIFAR-scale references for 28-64 px images (arch r18c).
METHOD_DEFAULTS = {
    ("moco", "imagenet"): {},  # COMMON is MoCo v2 / HPT on ImageNet
    ("moco", "small"): {"lr": 0.06, "lr_reference_batch": 512, "weight_decay": 5e-4, "queue_size": 4096,
                        "ema_momentum": 0.99, "temperature": 0.1, "proj_hidden": 512, "bn_splits": 8,
                        "augment": "moco_small"},
    ("simclr", "imagenet"): {"optimizer": "lars", "lr": 0.075, "lr_scaling": "sqrt", "weight_decay": 1e-4,
                             "exclude_bn_bias": True, "temperature": 0.1, "augment": "simclr",
                             "warmup_steps": "5%"},
    ("simclr", "small"): {"optimizer": "lars", "lr": 1.0, "lr_scaling": "linear", "lr_reference_batch": 512,
                          "weight_decay": 1e-4, "exclude_bn_bias": True, "temperature": 0.5, "proj_hidden": 512,
                          "augment": "simclr_small", "warmup_steps": "5%"},
}
METHOD_DEFAULTS.update(registry.METHOD_DEFAULTS)  # the methods beyond MoCo / SimCLR (training.registry)
METHODS = registry.METHODS
CHOICES = {"method": METHODS, "optimizer": ("sgd", "lars"), "lr_scaling": ("linear", "sqrt", "none"),
           "trainable": ("all", "bn"), "device": ("auto", "cpu", "cuda"), "amp": ("auto", "off", "bf16"),
           "channels_last": ("auto", True, False), "augment_device": ("auto", True, False), "channels": ("auto", 1, 3)}
# keys that may differ when resuming a run (they do not change the result: the kNN monitor embeds a fixed
# subset in eval mode, drawing no torch random numbers and leaving BN statistics alone)
RESUMABLE_CHANGES = {"num_workers", "progress", "log_every", "checkpoint_every", "keep_checkpoints", "knn_every",
                     "knn_k", "knn_t", "knn_train_images", "knn_test_images", "device"}


def scale_of(arch: str) -> str:
    return "small" if arch == "r18c" else "imagenet"


def read_recipe(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file {path} does not exist")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = load_yaml(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"recipe {path}: use .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except Exception as error:
        raise ConfigError(f"recipe {path} is not valid {path.suffix[1:]}: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of key: value")
    return data


def _check_known(values: dict, where: str, method: str | None = None) -> None:
    for key in values:
        owner = registry.owner_of(key)
        if owner and method and owner != method and key not in registry.METHOD_KEYS.get(method, {}):
            raise ConfigError(f"{key!r} in {where} is a setting of method {owner!r}, not of {method!r}")
        if key not in COMMON and not owner:
            known = set(COMMON).union(*registry.METHOD_KEYS.values())
            near = difflib.get_close_matches(key, known, n=2)
            raise ConfigError(f"unknown key {key!r} in {where}" + (f"; did you mean {', '.join(near)}?" if near else
                                                                   f"; known keys: {', '.join(sorted(known))}"))


def resolve(recipe: dict | None = None, overrides: dict | None = None) -> dict:
    recipe, overrides = dict(recipe or {}), {k: v for k, v in (overrides or {}).items() if v is not None}
    chosen = {**recipe, **overrides}
    method = chosen.get("method", COMMON["method"])
    if method not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, not {method!r}")
    _check_known(recipe, "the recipe", method)
    _check_known(overrides, "the command line", method)
    from .models import short_arch
    if chosen.get("arch") is None and chosen.get("init"):
        # starting from a base without naming an arch: the base decides it (engine.prepare fills it in,
        # ImageNet-scale defaults); naming one that differs from the base's is an error there
        arch, scale = None, "imagenet"
    else:
        try:
            arch = short_arch(str(chosen.get("arch") or COMMON["arch"]))
        except ValueError as error:
            raise ConfigError(str(error)) from None
        scale = scale_of(arch)
    config = {**COMMON, **registry.METHOD_KEYS.get(method, {}), **METHOD_DEFAULTS[(method, scale)], **chosen,
              "arch": arch}
    _validate(config)
    if isinstance(config["warmup_steps"], str):  # "5%" of the run
        percent = float(config["warmup_steps"].strip()[:-1])
        config["warmup_steps"] = min(config["steps"] - 1, int(round(percent / 100 * config["steps"])))
    return config


def _validate(config: dict) -> None:
    if not config["data"]:
        raise ConfigError("no data: pass --data (an offline set such as fashion_mnist, an image folder, or hf:<id>)")
    for key, allowed in CHOICES.items():
        if config[key] not in allowed:
            raise ConfigError(f"{key} must be one of {allowed}, not {config[key]!r}")
    for key in ("steps", "batch_size", "queue_size", "proj_dim", "proj_hidden", "checkpoint_every", "log_every",
                "knn_k", "bn_splits", "lr_reference_batch"):
        value = config[key]
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{key} must be a positive integer, not {value!r}")
    _validate_values(config)
    problems = registry.validate(config)
    if problems:
        raise ConfigError("; ".join(problems))
    if config["method"] == "moco" and config["batch_size"] > config["queue_size"]:
        raise ConfigError(f"queue_size ({config['queue_size']}) must be at least the batch ({config['batch_size']})")
    if config["bn_splits"] > config["batch_size"]:
        raise ConfigError("bn_splits cannot exceed batch_size")
    from .views import RECIPES
    if isinstance(config["augment"], str) and config["augment"] not in RECIPES:
        raise ConfigError(f"augment must be one of {sorted(RECIPES)} or a mapping, not {config['augment']!r}")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MIN_IMAGE_SIZE = 16  # below this a ResNet's last feature map is empty of content: almost surely a typo


def _validate_values(config: dict) -> None:
    """Every numeric hyperparameter: type, finiteness and range (NaN and inf never pass)."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(f"{key} must be {what}, not {config[key]!r}")

    for key in ("lr", "temperature", "knn_t"):
        need(_is_number(config[key]) and config[key] > 0, key, "a positive finite number")
    need(_is_number(config["weight_decay"]) and config["weight_decay"] >= 0, "weight_decay", "a finite number >= 0")
    need(_is_number(config["momentum"]) and 0 <= config["momentum"] < 1, "momentum", "a number in [0, 1)")
    need(_is_number(config["ema_momentum"]) and 0 <= config["ema_momentum"] < 1, "ema_momentum", "a number in [0, 1)")
    need(config["clip_grad"] is None or (_is_number(config["clip_grad"]) and config["clip_grad"] > 0), "clip_grad",
         "a positive finite number (the largest gradient norm) or null for no clipping")
    need(config["image_size"] is None or (_is_int(config["image_size"]) and config["image_size"] >= MIN_IMAGE_SIZE),
         "image_size", f"an integer >= {MIN_IMAGE_SIZE} (pixels) or null for the domain's size")
    need(config["crop_pct"] is None or (_is_number(config["crop_pct"]) and 0 < config["crop_pct"] <= 1), "crop_pct",
         "a number in (0, 1] or null")
    for key in ("seed", "num_workers", "knn_every"):
        need(_is_int(config[key]) and config[key] >= 0, key, "an integer >= 0")
    for key in ("keep_checkpoints", "knn_train_images", "knn_test_images", "head_layers"):
        if key in config:
            need(_is_int(config[key]) and config[key] > 0, key, "a positive integer")
    warmup = config["warmup_steps"]
    if isinstance(warmup, str):
        text = warmup.strip()
        try:
            percent = float(text[:-1]) if text.endswith("%") else None
        except ValueError:
            percent = None
        need(percent is not None and math.isfinite(percent) and 0 <= percent < 100, "warmup_steps",
             "an integer number of steps or a percentage of the run below 100%, like '5%'")
    else:
        need(_is_int(warmup) and 0 <= warmup < config["steps"], "warmup_steps",
             f"an integer from 0 to steps - 1 ({config['steps'] - 1}) or a percentage like '5%'")


class _Yaml12Loader:
    """yaml.SafeLoader that also reads 1e-3 as a float (YAML 1.2; PyYAML follows 1.1, where it is a string)."""
    loader = None

    @classmethod
    def get(cls):
        if cls.loader is None:
            import re

            import yaml

            class Loader(yaml.SafeLoader):
                pass

            Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
                r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))
            cls.loader = Loader
        return cls.loader


def load_yaml(text: str):
    """YAML as a user means it: safe (no tags that run code), and 1e-3 is a number."""
    import yaml

    return yaml.load(text, Loader=_Yaml12Loader.get())


def parse_assignments(items: list[str]) -> dict:
    """`key=value` pairs from the command line; values are parsed as YAML scalars (1e-4, true, 5%)."""
    import yaml

    values = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            values[key.strip()] = load_yaml(raw)
        except yaml.YAMLError as error:
            raise ConfigError(f"--set {item[:100]}: the value is not a YAML scalar ({error})") from None
    return values


def differences(saved: dict, current: dict) -> list[str]:
    return [key for key in sorted(set(saved) | set(current))
            if key not in RESUMABLE_CHANGES and key != "steps" and saved.get(key) != current.get(key)]
