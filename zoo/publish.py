"""Publishing a checkpoint folder: validate all of it, then commit (git mirror or the Hub), then pin it.

Order matters: everything that can be checked is checked before anything is written — the
folder (complete, every file matches the sha256 its zoo.json records, no stray or linked files,
the weights fit the architecture strictly, overlays fit and belong to a published trunk), the
name, the repo id and the catalog — so an error never leaves a half-published model. The card
is regenerated from zoo.json at publish time, so every published card carries the current Hub
metadata. Trunk folders become timm-loadable repos; overlay folders (Base, HPT-BN) become small
repos holding the BN file, whose card names the trunk as ``base_model``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import BN_DIR, CARD, CONFIG, META, WEIGHTS, read_json
from .errors import CheckpointFormatError, IncompatibleOverlayError, ZooError
from .integrity import sha256_file

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name) -> str:
    """A model name that is safe as a file name (cards) and a catalog key."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise ZooError(f"model name {repr(name)[:140]} is not a safe name (letters, digits, '-', '_', '.'; no '/' "
                       f"or '..'); set a name such as 'hpt-animals-mnv2' in zoo.json or pass --name")
    return name


@dataclass
class Payload:
    """What one publish puts in the repo, after validation."""
    name: str
    kind: str  # "trunk" | "overlay"
    meta: dict
    config: dict | None
    files: dict[str, bytes | Path] = field(default_factory=dict)
    trunk_entry: object = None  # the catalog Entry an overlay applies to


def _record_matches(path: Path, record) -> bool:
    return (isinstance(record, dict) and path.is_file() and path.stat().st_size == record.get("size")
            and sha256_file(path) == record.get("sha256"))


def _folder_files(folder: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ZooError(f"{path} is a symbolic link; a published folder must hold real files only")
        if path.is_file():
            found[relative] = path
    return found


def prepare(folder: str | os.PathLike, name: str | None = None, repo_id: str | None = None) -> Payload:
    """Validate a checkpoint folder completely and return what its repo will hold. Writes nothing."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooError(f"{folder} is not a checkpoint folder; publish the folder that training's export, "
                       f"`training hpt` or `zoo convert` wrote")
    meta = read_json(folder / META)
    if not isinstance(meta, dict):
        raise CheckpointFormatError(f"{folder / META} must hold a JSON object")
    name = check_name(name or meta.get("name"))
    records = meta.get("weights")
    if not isinstance(records, dict) or not records:
        raise CheckpointFormatError(f"{folder / META} records no file hashes ('weights'); re-export the folder")
    present = _folder_files(folder)
    overlay = "trunk" in meta
    heads = meta.get("heads") if isinstance(meta.get("heads"), dict) else None  # training heads, kept on request
    if heads and (heads.get("file") != "heads.safetensors" or not _record_matches(folder / "heads.safetensors", heads)):
        raise ZooError(f"{folder}: its heads file does not match the sha256/size zoo.json records; re-export it")
    allowed = {META, CARD, *records} | (set() if overlay else {CONFIG}) | ({"heads.safetensors"} if heads else set())
    stray = sorted(set(present) - allowed)
    if stray:
        raise ZooError(f"{folder} holds files its zoo.json does not record: {', '.join(stray[:8])}; remove them "
                       f"(they would be published unverified) or re-export the folder")
    for filename, record in sorted(records.items()):
        if filename not in present:
            raise CheckpointFormatError(f"{folder} lacks {filename}, which its zoo.json records; re-export the folder")
        if not _record_matches(present[filename], record):
            raise ZooError(f"{folder / filename} does not match the sha256/size its zoo.json records: the file "
                           f"changed after export. Re-export the folder (nothing was published)")
    variants = list(meta.get("bn_variants", []))
    for variant in variants:
        if not isinstance(variant, str) or not SAFE_NAME.match(variant) or f"{BN_DIR}/{variant}.safetensors" not in records:
            raise CheckpointFormatError(f"{folder / META}: BN variant {variant!r} has no recorded bn/{variant}.safetensors")
    payload = Payload(name, "overlay" if overlay else "trunk", {**meta, "name": name}, None)
    payload.meta["lineage"] = _lineage_with_repos(meta.get("lineage", []))
    if overlay:
        _check_overlay(folder, payload, variants)
    else:
        _check_trunk(folder, payload, variants)
    _check_name_agrees(folder, payload)
    from .cards import render_card, render_variant_card

    payload.files = {filename: present[filename] for filename in sorted(records)}
    payload.files[META] = present[META]
    if heads:
        payload.files["heads.safetensors"] = present["heads.safetensors"]
    if payload.config is not None:
        payload.files[CONFIG] = present[CONFIG]
    payload.files[CARD] = render_card(payload.meta, payload.config or {}, repo_id).encode()
    if not overlay:  # each attached BN variant gets its own card: `zoo card base-<domain>-<arch>`
        for variant in variants:
            payload.files[f"{BN_DIR}/{variant}.md"] = render_variant_card(payload.meta, payload.config, variant, repo_id).encode()
    return payload


def _check_name_agrees(folder: Path, payload: Payload) -> None:
    """The name users will load must say what the folder holds (strategy, domain, arch as zoo.json records
    them; the arch's timm architecture as config.json builds it)."""
    from .names import check_name_agrees

    meta = payload.meta
    fields = {key: meta.get(key) if isinstance(meta.get(key), str) else None for key in ("strategy", "domain", "arch")}
    architecture = (payload.config or {}).get("architecture") or meta.get("timm_arch")
    check_name_agrees(payload.name, **fields, architecture=architecture if isinstance(architecture, str) else None,
                      where=f"{folder}'s zoo.json/config.json")


def _lineage_with_repos(lineage) -> list:
    """Lineage hops that are published zoo names get their Hub repo (the card's base_model)."""
    from .catalog import catalog

    models = catalog()["models"]
    steps = []
    for step in lineage if isinstance(lineage, list) else []:
        entry = models.get(step.get("name")) if isinstance(step, dict) and isinstance(step.get("name"), str) else None
        steps.append({**step, "repo_id": entry["repo_id"]} if isinstance(entry, dict) and "repo_id" not in step
                     and entry.get("repo_id") else step)
    return steps


def _check_trunk(folder: Path, payload: Payload, variants: list[str]) -> None:
    from . import build
    from .bn import apply_bn

    config = read_json(folder / CONFIG)
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
        raise CheckpointFormatError(f"{folder / CONFIG} has no 'architecture'; re-export the folder")
    weights = payload.meta["weights"].get(WEIGHTS)
    if weights is None:
        raise CheckpointFormatError(f"{folder} has no {WEIGHTS} recorded in its zoo.json; re-export the folder")
    if payload.meta.get("trunk_sha256") not in (None, weights["sha256"]):
        raise ZooError(f"{folder / META}: trunk_sha256 disagrees with the recorded {WEIGHTS}; re-export the folder")
    try:
        classes = int(config.get("num_classes", 0))
        model = build.build_from_file(config["architecture"], folder / WEIGHTS, classes, config.get("model_args"))
    except ZooError:
        raise
    except Exception as error:  # an unknown architecture, bad model_args: say so before publishing
        raise CheckpointFormatError(f"{folder}: cannot build {config['architecture']!r} from its weights "
                                    f"({type(error).__name__}: {str(error)[:300]})") from None
    for variant in variants:  # each overlay must fit this trunk exactly and be bound to it
        apply_bn(model, folder / BN_DIR / f"{variant}.safetensors", weights["sha256"])
    payload.config = config


def _check_overlay(folder: Path, payload: Payload, variants: list[str]) -> None:
    from .bn import bn_keys, overlay_metadata
    from .build import create_on_meta
    from .catalog import resolve

    meta = payload.meta
    trunk = meta.get("trunk")
    if not isinstance(trunk, dict) or not isinstance(trunk.get("name"), str) or len(variants) != 1:
        raise CheckpointFormatError(f"{folder / META}: an overlay folder needs trunk {{name, sha256}} and exactly one "
                                    f"BN variant; re-create it with `python -m training hpt`")
    try:
        entry, implied = resolve(trunk["name"])
    except ZooError as error:
        raise ZooError(f"{folder}'s trunk {trunk['name']!r} is not a published name ({error}). Publish the trunk "
                       f"first and make the overlay on the published name, so users can load both") from None
    if implied or "trunk" in entry.data:
        raise ZooError(f"{folder}'s trunk {trunk['name']!r} is itself an overlay; make the overlay on a full trunk")
    trunk_sha = entry.file(WEIGHTS)["sha256"]
    overlay_file = folder / BN_DIR / f"{variants[0]}.safetensors"
    made_for = overlay_metadata(overlay_file).get("trunk_sha256")
    if not (trunk.get("sha256") == meta.get("trunk_sha256") == made_for == trunk_sha):
        raise IncompatibleOverlayError(f"{folder} was made for trunk sha256 {str(made_for)[:12]}..., but the published "
                                       f"{entry.name} has {trunk_sha[:12]}...; recreate the overlay on it")
    metadata = overlay_metadata(overlay_file)
    from safetensors import safe_open

    model = create_on_meta(entry.timm_arch, int(entry.num_classes), entry.data.get("model_args"))
    expected = set(bn_keys(model, affine=metadata.get("kind") == "stats+affine"))
    with safe_open(str(overlay_file), framework="pt") as handle:
        keys = set(handle.keys())
    if keys != expected:
        from .build import describe_key_mismatch
        raise CheckpointFormatError(f"{overlay_file} does not fit {entry.name}: "
                                    f"{describe_key_mismatch(expected - keys, keys - expected)}")
    payload.trunk_entry = entry
    payload.meta = {**meta, "trunk": {**trunk, "name": entry.name, "repo_id": entry.repo_id}}


def _record(content: bytes | Path) -> dict:
    import hashlib

    if isinstance(content, bytes):
        return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}
    return {"sha256": sha256_file(content), "size": Path(content).stat().st_size}


_META_KEYS = ("strategy", "method", "domain", "lineage", "steps", "hyperparameters", "evaluations", "summary",
              "license", "license_id", "bn_variants", "trunk_sha256", "data", "source", "bn_variant_cfg",
              "default_bn", "recommended")


def catalog_entry(payload: Payload, repo_id: str, revision: str) -> dict:
    """The catalog record of a published payload: everything load/info need without a download."""
    from .names import ARCH_ALIASES

    meta = payload.meta
    entry = {"repo_id": repo_id, "revision": revision,
             "files": {name: _record(content) for name, content in sorted(payload.files.items())}}
    entry.update({key: meta[key] for key in _META_KEYS if key in meta})
    if payload.kind == "trunk":
        config = payload.config
        entry.update(timm_arch=config["architecture"], num_classes=config.get("num_classes", 0),
                     num_features=config.get("num_features"), pretrained_cfg=config.get("pretrained_cfg", {}),
                     arch=meta.get("arch") or ARCH_ALIASES.get(config["architecture"], config["architecture"]))
        if config.get("model_args"):
            entry["model_args"] = config["model_args"]
        return entry
    trunk = payload.trunk_entry
    cfg = dict(trunk.data.get("pretrained_cfg", {}))
    spec = meta.get("input")
    hyper = meta.get("hyperparameters") if isinstance(meta.get("hyperparameters"), dict) else {}
    if not isinstance(spec, dict) and isinstance(hyper.get("image_size"), int):  # HPT-BN: its training input
        spec = {"image_size": hyper["image_size"], **({"crop_pct": hyper["crop_pct"]}
                                                     if isinstance(hyper.get("crop_pct"), (int, float)) else {})}
    if isinstance(spec, dict) and spec.get("image_size"):  # the statistics were computed at this input
        cfg.update(input_size=[spec.get("channels", cfg.get("input_size", [3])[0]), spec["image_size"],
                               spec["image_size"]],
                   **{k: spec[k] for k in ("mean", "std", "interpolation", "crop_pct") if k in spec})
    entry.update(trunk=trunk.name, timm_arch=trunk.timm_arch, arch=meta.get("arch") or trunk.data.get("arch"),
                 num_classes=trunk.num_classes, num_features=trunk.data.get("num_features"), pretrained_cfg=cfg)
    if trunk.data.get("model_args"):
        entry["model_args"] = trunk.data["model_args"]
    return entry


def publish_to_hub(payload: Payload, repo_id: str, *, endpoint: str | None = None, token: str | None = None,
                   private: bool = False) -> str:
    """Commit the payload to a Hub (huggingface.co or a compatible server) with HfApi; return the commit id.

    create_repo (exist_ok) then one create_commit that adds every file and deletes files the new
    revision no longer has, so the repo's history holds each publish as one commit. The token
    comes from `token`, else HF_TOKEN / the saved login (huggingface_hub's rules).
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from .mirror import check_repo_id

    check_repo_id(repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    where = endpoint or api.endpoint
    try:
        api.create_repo(repo_id, exist_ok=True, private=private)
        existing = set(api.list_repo_files(repo_id))
        operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content if isinstance(content, bytes)
                                         else str(content)) for name, content in sorted(payload.files.items())]
        operations += [CommitOperationDelete(path_in_repo=name)
                       for name in sorted(existing - set(payload.files) - {".gitattributes"})]
        info = api.create_commit(repo_id, operations=operations, commit_message=f"publish {payload.name}")
    except (HfHubHTTPError, OSError) as error:
        status = getattr(getattr(error, "response", None), "status_code", None)
        raise ZooError(f"the Hub at {where} did not accept the publish of {repo_id} "
                       f"({type(error).__name__}{f', HTTP {status}' if status else ''}: {str(error)[:200]}). "
                       f"Set HF_TOKEN to a token with write access to the org, check HF_ENDPOINT (a read-only "
                       f"mirror such as olah cannot take uploads: use --mirror ROOT there)") from None
    return info.oid


def publish(folder: str | os.PathLike, repo_id: str, *, mirror: str | os.PathLike | None = None,
            hub: bool = False, endpoint: str | None = None, catalog: str | os.PathLike | None = None,
            base_for: str | None = None, cards: str | os.PathLike | None = None, name: str | None = None,
            keep_history: bool = True) -> dict:
    """Validate everything, commit to the mirror or the Hub, then pin the commit in `catalog`."""
    from .catalog import check_catalog_writable, update_catalog
    from .mirror import check_repo_id

    if (mirror is None) == (not hub):
        raise ZooError("say where to publish: --mirror ROOT (a git mirror for olah) or --hub (HfApi, HF_ENDPOINT)")
    check_repo_id(repo_id)
    payload = prepare(folder, name, repo_id)
    if catalog is not None:
        check_catalog_writable(catalog)
    if base_for is not None:
        from .names import ARCHS
        if base_for not in ARCHS or payload.kind != "trunk":
            raise ZooError(f"--base-for takes an arch short name ({', '.join(ARCHS)}) and a trunk folder")
    if hub:
        revision = publish_to_hub(payload, repo_id, endpoint=endpoint)
    else:
        from .mirror import commit_files
        revision = commit_files(mirror, repo_id, payload.files, f"publish {payload.name}")
    result = {"name": payload.name, "repo_id": repo_id, "revision": revision, "kind": payload.kind}
    if catalog is not None:
        update_catalog(catalog, payload.name, catalog_entry(payload, repo_id, revision), base_for, keep_history)
        result["catalog"] = str(catalog)
    if cards is not None:
        result["cards"] = [str(p) for p in write_cards(payload, cards)]
    return result


def write_cards(payload: Payload, cards_dir: str | os.PathLike) -> list[Path]:
    """model_cards/<name>.md = each card exactly as published (the repo's README.md and bn/<domain>.md)."""
    from .cards import variant_name

    cards_dir = Path(cards_dir)
    cards = {check_name(payload.name): payload.files[CARD]}
    for variant in payload.meta.get("bn_variants", []) if payload.kind == "trunk" else []:
        cards[check_name(variant_name(payload.meta, variant))] = payload.files[f"{BN_DIR}/{variant}.md"]
    cards_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in cards.items():
        target = cards_dir / f"{name}.md"
        temporary = cards_dir / f".{name}.md.{os.getpid()}.tmp"
        temporary.write_bytes(content if isinstance(content, bytes) else Path(content).read_bytes())
        os.replace(temporary, target)
        written.append(target)
    return written


def publish_to_mirror(folder: str | os.PathLike, mirror_root: str | os.PathLike, repo_id: str,
                      repo_type: str = "model") -> str:
    """Publish a folder as the mirror repo's next commit; return the commit id (no catalog update).

    A model folder is validated first (`prepare`) and its card regenerated; a dataset folder is
    published as it is (it needs a README.md, its card: `datasets` reads it first and, served by
    olah, a repo without one looks absent).
    """
    from .mirror import commit_files

    if repo_type == "model":
        payload = prepare(folder, repo_id=repo_id)
        return commit_files(mirror_root, repo_id, payload.files, f"publish {payload.name}")
    folder = Path(folder)
    if not folder.is_dir():
        raise ZooError(f"{folder} is not a folder")
    files = {name: path for name, path in _folder_files(folder).items()}
    return commit_files(mirror_root, repo_id, files, f"publish {repo_id}", repo_type)
