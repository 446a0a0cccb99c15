"""The name grammar: ``{strategy}-{domain}[-from-{source}]-{arch}[-{steps}]``.

Examples: ``sup-imagenet-mnv2``, ``moco-imagenet-r50``, ``hpt-chexpert-r50``,
``hptbn-chexpert-r50``, ``base-chexpert-r50`` (the ImageNet trunk with CheXpert BN statistics),
``target-chexpert-r50-200k``, ``hpt-chest_xray_kids-from-chexpert-r50``.
Names are parsed against the strategy, domain and architecture registries, so a typo is an
error with suggestions rather than a guess; ``format_name(parse_name(s))`` gives the canonical
spelling back (aliases such as ``kids`` or ``resnet50`` are accepted on input).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .domains import DOMAINS, resolve_domain_name
from .errors import UnknownNameError

# strategy -> what it means; the HPT study's four strategies plus the methods that make bases.
STRATEGIES = {
    "sup": "supervised pretraining (a base model)",
    "moco": "MoCo v2 self-supervised pretraining",
    "simclr": "SimCLR v2 self-supervised pretraining",
    "pic": "Parametric Instance Classification",
    "selftrain": "Noisy-Student self-training",
    "rotation": "rotation-prediction pretext task (a self-supervised baseline)",
    "distill": "SimCLR v2 semi-supervised: fine-tuned on a label fraction, distilled into a student",
    "hpt": "hierarchical pretraining: MoCo v2 continued from a base on the target",
    "hptbn": "HPT training only BatchNorm parameters (a BN overlay on the base trunk)",
    "base": "the base trunk with BatchNorm statistics recalibrated on the target (a BN overlay)",
    "target": "MoCo v2 from random initialisation on the target only",
}
STRATEGY_ALIASES = {"mocov2": "moco", "moco_v2": "moco", "simclrv2": "simclr", "supervised": "sup",
                    "noisy_student": "selftrain", "rot": "rotation", "hpt_bn": "hptbn", "scratch": "target"}

# short arch -> timm architecture
ARCHS = {
    "r18": "resnet18",
    "r50": "resnet50",
    "mnv2": "mobilenetv2_100",
    "r18c": "resnet18",  # CIFAR-style 3x3 stem, no max-pool (built by training.models)
}
ARCH_ALIASES = {"resnet18": "r18", "resnet50": "r50", "mobilenetv2": "mnv2", "mobilenet_v2": "mnv2",
                "mobilenetv2_100": "mnv2"}

_STEPS = re.compile(r"^(\d+)(k?)$")


@dataclass(frozen=True)
class ModelName:
    strategy: str
    domain: str
    arch: str
    source: str | None = None
    steps: int | None = None

    def __str__(self) -> str:
        return format_name(self)

    @property
    def timm_arch(self) -> str:
        return ARCHS[self.arch]


def _format_steps(steps: int) -> str:
    return f"{steps // 1000}k" if steps >= 1000 and steps % 1000 == 0 else str(steps)


def format_name(name: ModelName) -> str:
    parts = [name.strategy, name.domain]
    if name.source:
        parts += ["from", name.source]
    parts.append(name.arch)
    if name.steps is not None:
        parts.append(_format_steps(name.steps))
    return "-".join(parts)


def _registered(kind: str, token: str, known: dict, aliases: dict) -> str:
    token = token.lower()
    token = aliases.get(token, token)
    if token not in known:
        raise UnknownNameError(kind, token, list(known) + list(aliases))
    return token


def _strategy(token: str) -> str:
    return _registered("strategy", token, STRATEGIES, STRATEGY_ALIASES)


def _arch(token: str) -> str:
    return _registered("architecture", token, ARCHS, ARCH_ALIASES)


def _domain(token: str) -> str:
    canonical = resolve_domain_name(token)
    if canonical is None:
        raise UnknownNameError("domain", token, list(DOMAINS))
    return canonical


def parse_name(text: str) -> ModelName:
    """Parse a model name; raises UnknownNameError naming the bad part and close matches."""
    tokens = text.strip().lower().split("-")
    if len(tokens) < 3:
        raise UnknownNameError("model name", text, [], hint="Expected '{strategy}-{domain}[-from-{source}]-{arch}[-{steps}]', "
                               "e.g. 'hpt-chexpert-r50'; run `zoo list` to see published names.")
    strategy = _strategy(tokens[0])
    rest = tokens[1:]
    steps = None
    match = _STEPS.match(rest[-1])
    if match and len(rest) >= 3:
        steps = int(match.group(1)) * (1000 if match.group(2) else 1)
        rest = rest[:-1]
    arch = _arch(rest[-1])
    rest = rest[:-1]
    source = None
    if "from" in rest:
        cut = rest.index("from")
        source = _domain("-".join(rest[cut + 1:]))
        rest = rest[:cut]
    # domains may contain '-' when a user types an alias like fashion-mnist
    domain = _domain("-".join(rest))
    return ModelName(strategy, domain, arch, source, steps)


def canonical(text: str) -> str:
    return format_name(parse_name(text))


def check_name_agrees(name: str, *, strategy: str | None, domain: str | None, arch: str | None,
                      architecture: str | None = None, where: str = "the checkpoint") -> ModelName:
    """Refuse a name that says something else than the checkpoint: its strategy, domain and arch must be
    what zoo.json records (and the arch's timm architecture what config.json builds). A field the
    checkpoint does not record (None) is not compared."""
    from .errors import NameMismatchError

    parsed = parse_name(name)
    problems = []
    if strategy is not None and parsed.strategy != strategy:
        problems.append(f"strategy {parsed.strategy!r} in the name, {strategy!r} in {where}")
    if domain is not None and parsed.domain != resolve_domain_name(domain):
        problems.append(f"domain {parsed.domain!r} in the name, {domain!r} in {where}")
    if arch is not None and parsed.arch != arch:
        problems.append(f"arch {parsed.arch!r} in the name, {arch!r} in {where}")
    elif architecture is not None and ARCHS[parsed.arch] != architecture:
        problems.append(f"arch {parsed.arch!r} ({ARCHS[parsed.arch]}) in the name, architecture {architecture!r} "
                        f"in config.json")
    if problems:
        fitting = ModelName(strategy or parsed.strategy, resolve_domain_name(domain or "") or parsed.domain,
                            arch or parsed.arch, parsed.source, parsed.steps)
        raise NameMismatchError(f"the name {name!r} disagrees with {where}: {'; '.join(problems)}. "
                                f"Use a name that matches, e.g. {format_name(fitting)!r}")
    return parsed
