"""HPT: every strategy of the study as one call whose output is a zoo checkpoint with its lineage.

HPT is not a new loss. It is a recipe: MoCo v2 whose initial weights come from ``zoo.load``
(backbone only; fresh projection head; key encoder copied from the query encoder), optionally
training BatchNorm parameters only, and whose lineage grows by one hop.

    base    base trunk + BN statistics recalibrated on the target -> an overlay-only folder
    target  MoCo v2 from random init on the target
    hpt     MoCo v2 from the base (or from a source hop: base -> source -> target)
    hptbn   like hpt, only BN parameters train -> an overlay (stats + affine) on the base trunk

    python -m training hpt --strategy hpt --target animals --base sup-imagenet-mnv2 --steps 500 --out out/
    python -m training hpt --recipe recipes/hpt/hpt-chexpert-r50.yaml --out out/
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from zoo.domains import DOMAINS, HPT_CHAINS, HPT_TARGETS, get_domain
from zoo.loader import trunk_sha256
from zoo.names import ModelName, format_name

from .offline_sets import LOADERS, DataNotFoundError

STRATEGIES = ("base", "target", "hpt", "hptbn")

# The study's MoCo v2 settings (hpt-protocol.md); ResNet-50 at 224 px, lr 0.03 at batch 256.
STUDY_MOCO = {"method": "moco", "batch_size": 256, "lr": 0.03, "lr_reference_batch": 256, "momentum": 0.9,
              "weight_decay": 1e-4, "queue_size": 65536, "ema_momentum": 0.999, "temperature": 0.2,
              "proj_hidden": 2048, "proj_dim": 128, "augment": "moco", "image_size": 224}
STUDY_STEPS = {"hpt": 5000, "hptbn": 5000, "target": 100000}
STUDY_BASES = {"r50": "moco-imagenet-r50", "mnv2": "sup-imagenet-mnv2"}


def data_root() -> Path:
    return Path(os.environ.get("ZOO_DATA", Path.home() / "zoo-data")).expanduser()


def data_spec(domain: str, data: str | None = None) -> str:
    """Where a domain's images are: an explicit --data, an offline set, or $ZOO_DATA/<domain>. A prepared
    folder must hold this domain's data (a recipe for chexpert never trains on prepared pascal)."""
    from .prepare.core import read_manifest

    name = get_domain(domain).name
    folder = data_root() / name
    chosen = data or (name if name in LOADERS else None)
    if chosen is None and folder.is_dir() and any(folder.iterdir()):
        chosen = str(folder)
    if chosen and Path(chosen).expanduser().is_dir():
        manifest = read_manifest(Path(chosen).expanduser())
        if manifest and manifest["domain"] != name:
            raise DataNotFoundError(f"{chosen} holds prepared {manifest['domain']!r} data, not {name!r}; prepare "
                                    f"{name} with: python -m training prepare {name} <download> --out <folder>")
    if chosen:
        return chosen
    info = DOMAINS[name]
    raise DataNotFoundError(
        f"no data for domain {name!r} ({info.title}) at {folder}. {info.obtain.rstrip('.')} --out {folder} "
        f"(or set ZOO_DATA to the folder that holds {name}/), or pass --data {name}=<prepared folder | image folder "
        f"| hf:<dataset id>>. Terms: {info.terms}")


def name_of(strategy: str, target: str, arch: str, source: str | None = None, steps: int | None = None) -> str:
    return format_name(ModelName(strategy, get_domain(target).name, arch,
                                 get_domain(source).name if source else None, steps))


def recipe(strategy: str, target: str, arch: str = "r50", source: str | None = None, steps: int | None = None,
           base: str | None = None) -> dict:
    """The study's recipe for one strategy/target (what `recipes/hpt/*.yaml` hold)."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
    spec = {"strategy": strategy, "target": get_domain(target).name, "arch": arch,
            "name": name_of(strategy, target, arch, source)}
    if strategy == "base":
        return {**spec, "base": base or STUDY_BASES.get(arch)}
    training = dict(STUDY_MOCO, steps=steps or STUDY_STEPS[strategy])
    if strategy in ("hpt", "hptbn"):
        spec["base"] = base or STUDY_BASES.get(arch)
    if strategy == "hptbn":
        training.update(trainable="bn", lr=0.1)
    if source:
        spec["source"] = get_domain(source).name
    return {**spec, "training": training}


def write_matrix(folder: str | os.PathLike, arch: str = "r50") -> list[Path]:
    """16 targets x {base, target, hpt, hptbn} + the study's 3 chains, one YAML recipe each."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    items = [recipe(s, t, arch) for t in HPT_TARGETS for s in STRATEGIES]
    items += [recipe("hpt", t, arch, source=s) for s, t in HPT_CHAINS]
    for item in items:
        path = folder / f"{item['name']}.yaml"
        path.write_text(f"# {item['name']}: python -m training hpt --recipe {path} --out exported/{item['name']}\n"
                        + yaml.safe_dump(item, sort_keys=False))
        written.append(path)
    return written


def base_arch(base: str) -> str:
    """The architecture a base gives, known before anything is downloaded: a zoo name encodes it
    (`moco-imagenet-r50`), a local folder's zoo.json records it."""
    from zoo.names import parse_name

    if Path(base).expanduser().exists():
        import zoo
        from .models import short_arch

        details = zoo.info(base)
        return details.get("arch") or short_arch(details.get("timm_arch") or details.get("architecture"))
    return parse_name(base).arch


def planned_arch(spec: dict) -> str:
    """The architecture `run(spec)` would train (checked without training): the base's where there is one,
    else the recipe's arch as the training config resolves it. Raises ConfigError when they disagree."""
    from . import config as configuration
    from .engine import check_base_arch

    base = spec.get("base") if spec["strategy"] in ("base", "hpt", "hptbn") else None
    if base:
        arch = base_arch(base)
        check_base_arch(spec["arch"], arch, base)
        return arch
    training = {**spec.get("training", {}), "arch": spec["arch"], "data": "planned"}
    return configuration.resolve(None, training)["arch"]


def _hop(config_overrides: dict, data: str, init: str | None, run_dir: Path, out: Path, name: str,
         evaluations=None) -> Path:
    from . import config as configuration
    from .engine import pretrain
    from .export import export

    config = configuration.resolve(None, {**config_overrides, "data": data, "init": init})
    pretrain(config, run_dir)
    return export(run_dir, out, name=name, evaluations=evaluations)


def lineage_from(init: str) -> list[dict]:
    """The full lineage of a starting checkpoint, ending with that checkpoint itself.

    It appears once, as "base" (a published model) or "source" (an earlier hop of a chain), so
    base -> source -> target reads off zoo.info(...)["lineage"] in order."""
    import zoo

    details = zoo.info(init)
    history = [dict(step) for step in details.get("lineage", [])]
    started_from = {
        "role": "source" if details.get("strategy") in ("hpt", "hptbn", "target") else "base",
        "name": details.get("name", str(init)), "domain": details.get("domain"), "method": details.get("method"),
        "steps": details.get("steps"),
        "sha256": trunk_sha256(details)}
    if history and history[-1].get("name") == started_from["name"]:
        history[-1]["role"] = started_from["role"]
    else:
        history.append(started_from)
    return history


def _lineage_through(init: str, hop_out: Path) -> None:
    """Replace the exported hop's lineage by the starting point's full lineage + the hop itself."""
    from zoo.cards import render_card
    from zoo.checkpoint import CARD, CONFIG, META, dump_json, read_json

    meta = read_json(hop_out / META)
    meta["lineage"] = lineage_from(init) + meta.get("lineage", [])[-1:]
    (hop_out / META).write_text(dump_json(meta))
    (hop_out / CARD).write_text(render_card(meta, read_json(hop_out / CONFIG)))


def eval_batches(source, spec, batch_size: int = 256, max_images: int | None = None):
    """The source's images, preprocessed as for evaluation (no augmentation), in order."""
    from .views import eval_transform

    transform = eval_transform(spec)
    count = len(source) if max_images is None else min(len(source), max_images)
    for start in range(0, count, batch_size):
        yield torch.stack([transform(source.image(i)) for i in range(start, min(count, start + batch_size))])


def run_base(target: str, base: str, out: str | os.PathLike, *, data: str | None = None, image_size: int | None = None,
             crop_pct: float | None = None, batch_size: int = 256, max_images: int | None = None) -> Path:
    """Base strategy: the base trunk with BN statistics recalibrated on the target (an overlay folder)."""
    import zoo
    from zoo.bn import extract_bn
    from zoo.checkpoint import write_overlay_checkpoint

    from .data import open_source
    from .views import input_spec

    domain = get_domain(target).name
    source = open_source(data_spec(domain, data), "train", domain)
    details = zoo.info(base)
    model = zoo.load(base)
    spec = input_spec(source.domain, base_cfg=details["pretrained_cfg"], image_size=image_size, crop_pct=crop_pct)
    zoo.recalibrate_bn(model, eval_batches(source, spec, batch_size, max_images))
    trunk_sha = trunk_sha256(details)
    name = name_of("base", domain, base_arch(base))
    with tempfile.TemporaryDirectory() as scratch:
        overlay = Path(scratch) / f"{domain}.safetensors"
        extract_bn(model, overlay, trunk_sha256=trunk_sha, domain=domain)
        lineage = lineage_from(base) + [
            {"role": "target", "name": name, "domain": domain, "method": "bn-recalibration",
             "steps": None, "sha256": None}]
        meta = {"name": name, "strategy": "base", "method": "bn-recalibration", "arch": details.get("arch"),
                "domain": domain, "steps": None, "lineage": lineage, "license": details.get("license", ""),
                "data": source.describe(), "timm_arch": details.get("timm_arch"), "input": spec.as_dict(),
                "summary": f"{base} with BatchNorm running statistics re-estimated on {domain} "
                           f"(exact cumulative average, weights frozen). An overlay: the trunk is not copied."}
        return write_overlay_checkpoint(out, overlay, domain, {"name": str(base), "sha256": trunk_sha}, meta)


def hptbn_overlay(exported: Path, base: str, out: str | os.PathLike, domain: str) -> Path:
    """Turn an HPT-BN export into an overlay on the base trunk, after proving nothing else changed."""
    import zoo
    from zoo.bn import extract_bn
    from zoo.checkpoint import META, read_json, write_overlay_checkpoint

    trained = zoo.load(exported)
    reference = zoo.load(base).state_dict()
    state = trained.state_dict()
    bn_keys = set(extract_bn(trained, affine=True))
    changed = [k for k, v in state.items() if k not in bn_keys and not torch.equal(v, reference[k])]
    if changed:
        raise RuntimeError(f"HPT-BN changed non-BN tensors {changed[:5]}: it cannot be stored as a BN overlay")
    details = zoo.info(base)
    trunk_sha = trunk_sha256(details)
    meta = read_json(Path(exported) / META)
    for key in ("weights", "trunk_sha256", "bn_variants", "format_version"):
        meta.pop(key, None)
    meta["timm_arch"] = details.get("timm_arch")
    with tempfile.TemporaryDirectory() as scratch:
        overlay = Path(scratch) / f"{domain}.safetensors"
        extract_bn(trained, overlay, trunk_sha256=trunk_sha, domain=domain, affine=True)
        return write_overlay_checkpoint(out, overlay, domain, {"name": str(base), "sha256": trunk_sha}, meta)


def run(spec: dict, out: str | os.PathLike, *, work: str | os.PathLike | None = None, data: dict | None = None,
        overrides: dict | None = None) -> Path:
    """Run one recipe (see `recipe`) and write its zoo checkpoint to `out`.

    data: optional {domain: --data spec}; overrides: training keys to change (a CPU-sized run); the base
    strategy reads image_size, crop_pct and bn_images (recalibrate on at most that many images; default all).
    """
    out = Path(out)
    data = data or {}
    strategy, target = spec["strategy"], spec["target"]
    planned_arch(spec)  # a base of another arch than the recipe's is refused before any work
    if strategy == "base":
        training = {**spec.get("training", {}), **(overrides or {})}
        return run_base(target, spec["base"], out, data=data.get(target), image_size=training.get("image_size"),
                        crop_pct=training.get("crop_pct"), max_images=training.get("bn_images"))
    overrides = {k: v for k, v in (overrides or {}).items() if k != "bn_images"}
    work = Path(work) if work else out.parent / f".{out.name}.runs"
    # the recipe's arch reaches the engine for every strategy (with a base, the engine checks they agree)
    training = {**spec.get("training", {}), **(overrides or {}), "arch": spec["arch"]}
    init = spec.get("base") if strategy in ("hpt", "hptbn") else None
    if spec.get("source"):  # chain: base -> source -> target, each hop exported and recorded
        source = spec["source"]
        source_out = work / f"hop-{source}"
        if not (source_out / "zoo.json").exists():
            hop_config = {k: v for k, v in training.items() if k != "trainable"}
            hop_config["domain"] = get_domain(source).name
            _hop(hop_config, data_spec(source, data.get(source)), init, work / f"run-{source}", source_out,
                 name_of("hpt", source, spec["arch"], steps=training.get("steps")))
            _lineage_through(init, source_out)
        init = str(source_out)
    name = spec.get("name") or name_of(strategy, target, spec["arch"], spec.get("source"))
    training["domain"] = get_domain(target).name
    if strategy == "hptbn":
        exported = _hop(training, data_spec(target, data.get(target)), init, work / f"run-{target}",
                        work / "export", name)
        _lineage_through(init, exported)
        result = hptbn_overlay(exported, init, out, get_domain(target).name)
        return result
    exported = _hop(training, data_spec(target, data.get(target)), init, work / f"run-{target}", out, name)
    if init:
        _lineage_through(init, exported)
    return exported


def with_overrides(spec: dict, *, arch: str | None = None, base: str | None = None) -> dict:
    """A recipe with --arch / --base from the command line; its default name follows the new arch."""
    from .models import short_arch

    spec = dict(spec)
    default_name = name_of(spec["strategy"], spec["target"], spec["arch"], spec.get("source"))
    if arch:
        spec["arch"] = short_arch(arch)
    if base:
        spec["base"] = base
    if spec.get("name") in (None, default_name):
        spec["name"] = name_of(spec["strategy"], spec["target"], spec["arch"], spec.get("source"))
    return spec


def main(args) -> int:
    import yaml

    if args.write_matrix:
        paths = write_matrix(args.write_matrix, args.arch or "r50")
        print(f"wrote {len(paths)} recipes to {args.write_matrix}")
        return 0
    if args.recipe:
        spec = with_overrides(yaml.safe_load(Path(args.recipe).read_text()), arch=args.arch, base=args.base)
    else:
        if not (args.strategy and args.target):
            raise ValueError("pass --recipe FILE, or --strategy and --target")
        # an explicitly named base decides the arch when none is asked for; else the study's r50
        arch = args.arch or (base_arch(args.base) if args.base else "r50")
        spec = recipe(args.strategy, args.target, arch, args.source, args.steps, args.base)
    overrides = {k: v for k, v in {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                                   "image_size": args.image_size, "queue_size": args.queue_size,
                                   "device": args.device, "seed": args.seed}.items() if v is not None}
    overrides.update(args.set or {})
    data = dict(item.split("=", 1) for item in args.data or [])
    result = run(spec, args.out, overrides=overrides, data=data)
    print(json.dumps({"out": str(result), "name": spec.get("name")}))
    return 0
