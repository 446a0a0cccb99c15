"""The catalog: every published checkpoint, pinned (repo, revision, file hashes), shipped with the package.

``zoo/catalog.json`` is written by ``zoo publish`` from what was actually published, never by
hand. Merged on top, in order: this machine's catalog ``$ZOO_HOME/catalog.json`` (what the demo
and `zoo publish --catalog` record locally; see README "The local hub") and the files listed in
``$ZOO_CATALOG`` (separated by the OS path separator: an air-gapped site's models, a test's
mirror). The format is open: every top-level object section (``models``, ``bases``,
``upstream``, ...) is merged key by key. Writers take a file lock and replace the file atomically.
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .errors import CatalogError, NotPublishedError, UnknownNameError, UnknownVariantError, close_matches
from .names import ModelName, canonical, parse_name

PACKAGED = Path(__file__).with_name("catalog.json")


@dataclass(frozen=True)
class Entry:
    name: str
    data: dict

    def __getattr__(self, key):  # entry.repo_id, entry.revision, entry.files, ...
        try:
            return self.data[key]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def bn_variants(self) -> list[str]:
        return list(self.data.get("bn_variants", []))

    def file(self, filename: str) -> dict:
        return self.data["files"][filename]


def user_catalog_path() -> Path:
    """This machine's own catalog (the demo's, and the default place to pin local publishes)."""
    from .integrity import zoo_home

    return zoo_home() / "catalog.json"


def catalog_paths() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("ZOO_CATALOG", "").split(os.pathsep) if p]
    return [PACKAGED, user_catalog_path()] + extra


@lru_cache(maxsize=8)
def _load(paths: tuple[Path, ...], stamps: tuple) -> dict:
    merged = {"models": {}, "bases": {}, "upstream": {}}  # upstream: publishers' files, converted on first use
    for path in paths:
        if not os.path.exists(path):  # absent or unreachable: skipped; a directory is named by _read_catalog
            continue
        for section, content in _read_catalog(path).items():
            if isinstance(content, dict):
                merged.setdefault(section, {}).update(content)
    return merged


_REQUIRED = {"repo_id": str, "revision": str, "timm_arch": str, "num_classes": int, "files": dict}


def _read_catalog(path: Path) -> dict:
    """One catalog file, checked: a malformed file is a CatalogError naming it, never a traceback later."""
    where = f"catalog {path}" + (" (listed in ZOO_CATALOG)" if path != PACKAGED else "")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CatalogError(f"{where} cannot be read: {error}. Fix or remove it from ZOO_CATALOG.") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(key, {}), dict) for key in ("models", "bases",
                                                                                          "upstream")):
        raise CatalogError(f"{where} must be a JSON object with a 'models' object (as `zoo publish --catalog` writes)")
    for name, entry in data.get("models", {}).items():
        problems = [key for key, kind in _REQUIRED.items() if not isinstance(entry, dict) or not isinstance(
            entry.get(key), kind)]
        weights = "model.safetensors" if "trunk" not in entry else f"bn/{entry.get('default_bn')}.safetensors"
        record = entry.get("files", {}).get(weights) if not problems else None
        if not problems and not (isinstance(record, dict) and isinstance(record.get("sha256"), str)
                                 and isinstance(record.get("size"), int)):
            problems.append(f"files[{weights!r}] (sha256 + size)")
        if problems:
            raise CatalogError(f"{where}: entry {str(name)[:80]!r} lacks {', '.join(problems)}; "
                               f"re-publish it with `zoo publish --catalog`")
    return data


def catalog() -> dict:
    paths = tuple(catalog_paths())
    stamps = tuple(p.stat().st_mtime_ns if p.is_file() else 0 for p in paths)
    return _load(paths, stamps)


def check_catalog_writable(path: str | os.PathLike) -> Path:
    """Before publishing: the catalog is a readable catalog file (or absent) in a folder we can write."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise CatalogError(f"catalog path {path} is not a file; pass a .json file path")
    if path.is_file():
        _read_catalog(path)
    folder = path.parent if path.parent != Path("") else Path(".")
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        raise CatalogError(f"cannot write the catalog {path}: {existing} is not writable")
    return path


def _lock_path(catalog_path: Path) -> Path:
    """The lock lives under $ZOO_HOME/locks (never a stray file next to the catalog, e.g. in the package)."""
    import hashlib

    from .integrity import zoo_home

    key = hashlib.sha256(str(catalog_path.resolve()).encode()).hexdigest()[:24]
    folder = zoo_home() / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"catalog-{key}.lock"


def update_catalog(catalog_path: str | os.PathLike, name: str, entry: dict, base_for_arch: str | None = None,
                   keep_history: bool = True) -> None:
    """Add/replace one model in a catalog file; optionally mark it as the arch's BN base.

    Read-modify-write under a file lock (concurrent publishers never lose each other's entries)
    and replaced through a unique temporary file (readers never see half a file). A model that
    moves to a new revision of the same repo keeps its earlier pins under ``history``, so
    ``zoo.load(name, revision=old)`` is still checked against hashes the catalog recorded.
    """
    import tempfile

    from filelock import FileLock

    catalog_path = check_catalog_writable(catalog_path)
    catalog_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(_lock_path(catalog_path))):
        data = _read_catalog(catalog_path) if catalog_path.is_file() else {"format_version": 1}
        models = data.setdefault("models", {})
        previous = models.get(name)
        if not keep_history:
            pass
        elif isinstance(previous, dict) and previous.get("repo_id") == entry.get("repo_id") \
                and previous.get("revision") not in (None, entry.get("revision")):
            history = [h for h in previous.get("history", []) if h.get("revision") != entry.get("revision")]
            history.append({"revision": previous["revision"], "files": previous.get("files", {})})
            entry = {**entry, "history": history}
        elif isinstance(previous, dict) and previous.get("history") and previous.get("repo_id") == entry.get("repo_id"):
            entry = {**entry, "history": previous["history"]}  # re-pinned to the same revision: the history stays
        # a model moved to another repo: the old repo's pins are not revisions of the new one, so they go
        models[name] = entry
        data.setdefault("bases", {})
        if base_for_arch:
            data["bases"][base_for_arch] = name
        handle, temporary = tempfile.mkstemp(prefix=f".{catalog_path.name}.", suffix=".tmp", dir=catalog_path.parent)
        try:
            with os.fdopen(handle, "w") as stream:
                stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")  # as checkpoint.dump_json
                stream.flush()
                os.fsync(stream.fileno())
            os.chmod(temporary, 0o644)
            os.replace(temporary, catalog_path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(temporary)
            raise


def published_names() -> list[str]:
    data = catalog()
    names = set(data["models"]) | set(data["upstream"])
    for arch, base in data["bases"].items():
        entry = data["models"].get(base, {})
        for domain in entry.get("bn_variants", []):
            names.add(f"base-{domain}-{arch}")
    return sorted(names)


def list_models(pattern: str | None = None) -> list[str]:
    names = published_names()
    if pattern:
        if not any(ch in pattern for ch in "*?["):
            pattern = f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatch(n, pattern)]
    return names


def recipe_hint(name: ModelName) -> str:
    """How to produce an unpublished checkpoint: the training command for this recipe."""
    from .names import format_name

    if name.strategy in ("base", "target", "hpt", "hptbn"):
        source = f" --source {name.source}" if name.source else ""
        steps = f" --steps {name.steps}" if name.steps else ""
        return (f"Produce it with: python -m training hpt --strategy {name.strategy} --target {name.domain} "
                f"--arch {name.arch}{source}{steps} --out exported/{format_name(name)} "
                f"(needs the {name.domain} data and the base model), then `zoo publish` the folder.")
    steps = f" --steps {name.steps}" if name.steps else ""
    if name.strategy == "moco" and name.domain == "imagenet":
        return (f"If you have the MoCo v2 authors' file: zoo convert moco_v2_800ep_pretrain.pth.tar "
                f"exported/{format_name(name)} --arch {name.arch} --name {format_name(name)}, then pass that folder "
                f"as --base. Or produce it with: python -m training pretrain --method moco --data imagenet "
                f"--arch {name.arch}{steps} --run runs/{format_name(name)}.")
    method = {"sup": "supervised"}.get(name.strategy, name.strategy)  # `python -m training` method names
    return (f"Produce it with: python -m training pretrain --method {method} --data {name.domain} "
            f"--arch {name.arch}{steps} --run runs/{format_name(name)}, export it with python -m training export, "
            f"then `zoo publish` the folder.")


def resolve(text: str) -> tuple[Entry, str | None]:
    """Name -> (catalog entry, implied BN variant). Raises typed errors with suggestions."""
    data = catalog()
    models = data["models"]
    if text in models:
        return Entry(text, models[text]), None
    upstream = _upstream_entry(text, data)
    if upstream:
        return upstream, None
    try:
        parsed = parse_name(text)
    except UnknownNameError as error:
        raise UnknownNameError("model", text, published_names(),
                               hint=f"({error}) Run `zoo list` to see published names.") from None
    name = canonical(text)
    if name in models:
        return Entry(name, models[name]), None
    upstream = _upstream_entry(name, data)
    if upstream:
        return upstream, None
    if parsed.steps is None:  # several step counts published: the recommended one, else ask
        prefix = name + "-"
        choices = {n: e for n, e in models.items() if n.startswith(prefix) and n[len(prefix):].rstrip("k").isdigit()}
        recommended = [n for n, e in choices.items() if e.get("recommended")] or (list(choices) if len(choices) == 1
                                                                                 else [])  # the only one published
        if len(recommended) == 1:
            return Entry(recommended[0], models[recommended[0]]), None
        if choices:
            raise UnknownNameError("model", name, list(choices),
                                   hint=f"Several step counts are published: {', '.join(sorted(choices))}; pick one.")
    if parsed.strategy == "base" and parsed.arch in data["bases"]:
        trunk_name = data["bases"][parsed.arch]
        trunk = Entry(trunk_name, models[trunk_name])
        if parsed.domain in trunk.bn_variants:
            return trunk, parsed.domain
    near = close_matches(name, published_names())
    near_text = f" Published names close to it: {', '.join(near)}." if near else ""
    raise NotPublishedError(f"{name!r} is a valid recipe name but no checkpoint is published for it yet."
                            f"{near_text} {recipe_hint(parsed)}")


def _upstream_entry(text: str, data: dict) -> Entry | None:
    name = find_upstream(text, data["upstream"])  # the name or one of its aliases, its entry checked
    return Entry(name, {**data["upstream"][name], "kind": "upstream"}) if name else None


# upstream names become folder names under $ZOO_HOME/upstream
UPSTREAM_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,95}$")


def find_upstream(text: str, section: dict) -> str | None:
    """The upstream name for a name or one of its aliases (entries are checked before use)."""
    name = text if text in section else next((n for n, data in section.items() if isinstance(data, dict)
                                              and isinstance(data.get("aliases"), list) and text in data["aliases"]), None)
    if name is not None:
        check_entry(name, section[name])
    return name


def check_entry(name: str, data) -> None:
    """An upstream entry from a catalog (possibly a hostile ZOO_CATALOG): the fields the loader relies on."""
    from .convert import FORMATS
    from .errors import CatalogError

    source = data.get("source") if isinstance(data, dict) else None
    problems = [] if isinstance(data, dict) and isinstance(source, dict) else ["a 'source' object"]
    if not problems:
        if not isinstance(data.get("timm_arch"), str):
            problems.append("timm_arch")
        if not (isinstance(source.get("url"), str) and source["url"].startswith(("https://", "http://"))):
            problems.append("source.url (http/https)")
        if source.get("format") not in FORMATS:
            problems.append(f"source.format (one of {', '.join(FORMATS)})")
        for key in ("sha256", "md5_prefix"):
            if source.get(key) is not None and not (isinstance(source[key], str) and re.fullmatch(r"[0-9a-f]{8,64}", source[key])):
                problems.append(f"source.{key} (lowercase hex)")
    if not UPSTREAM_NAME.match(name) or ".." in name:
        problems.append("a name of lowercase letters, digits, '-', '_', '.'")
    if problems:
        raise CatalogError(f"upstream entry {name[:80]!r} lacks {', '.join(problems)}; fix the catalog (the packaged "
                           f"zoo/catalog.json or a file listed in ZOO_CATALOG)")




def check_variant(entry: Entry, bn: str) -> str:
    from .domains import resolve_domain_name

    variant = resolve_domain_name(bn) or bn
    if variant not in entry.bn_variants:
        available = ", ".join(entry.bn_variants) or "none"
        near = close_matches(variant, entry.bn_variants)
        hint = f" Did you mean {', '.join(near)}?" if near else ""
        raise UnknownVariantError(f"{entry.name} has no BN variant {bn!r}; available: {available}.{hint} "
                                  f"Make a new one with zoo.recalibrate_bn + zoo.extract_bn.")
    return variant
