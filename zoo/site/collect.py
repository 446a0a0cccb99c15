"""What the web catalog shows: every model repo a mirror serves, read from git (what olah serves), joined
with the catalog (the pinned names).

Everything read here is untrusted (a mirror holds whatever was published): JSON that does not parse or
has the wrong shape makes the repo appear in the "could not be read" list instead of failing the site,
and no field is ever used as a path.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import CARD, CONFIG, META, WEIGHTS

_GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
_LFS_HEADER = b"version https://git-lfs.github.com/spec/v1\n"
_MAX_TEXT = 2_000_000  # a card or zoo.json larger than this is not a zoo file
# which protocol's number is a model's headline (the HPT study reports the linear probe first)
PROTOCOL_RANK = {"linear": 0, "finetune": 1, "semi": 2, "knn": 3}


class RepoError(ValueError):
    """A mirror repo the site cannot describe (shown on the index, not raised to the server)."""


@dataclass
class FileRecord:
    path: str
    size: int
    sha256: str
    lfs: bool


@dataclass
class Model:
    name: str
    repo_id: str
    commit: str
    meta: dict
    config: dict
    card: str
    files: list[FileRecord]
    catalog_name: str | None = None  # the name zoo.load knows it by, when a catalog lists this repo
    pinned_revision: str | None = None
    derived_names: list[str] = field(default_factory=list)  # base-<domain>-<arch>: BN variants named by the catalog

    def text(self, key: str) -> str:
        value = self.meta.get(key)
        return "" if value is None else str(value)

    @property
    def evaluations(self) -> list[dict]:
        return [e for e in self.meta.get("evaluations") or [] if isinstance(e, dict)]

    @property
    def lineage(self) -> list[dict]:
        return [s for s in self.meta.get("lineage") or [] if isinstance(s, dict)]

    @property
    def bn_variants(self) -> list[str]:
        return [str(v) for v in self.meta.get("bn_variants") or []]

    @property
    def trunk_sha256(self) -> str | None:
        for record in self.files:
            if record.path == WEIGHTS:
                return record.sha256
        return None

    @property
    def is_overlay(self) -> bool:
        """An overlay folder (base/hptbn strategies): BN tensors on another repo's trunk, no model.safetensors."""
        return self.trunk_sha256 is None

    @property
    def headline(self) -> dict | None:
        """The evaluation a row shows: on the model's own domain first, then the study's protocol order."""
        scored = [e for e in self.evaluations if score_of(e) is not None]
        if not scored:
            return None
        domain = self.text("domain")
        return min(scored, key=lambda e: (str(e.get("data")) != domain, PROTOCOL_RANK.get(str(e.get("protocol")), 9),
                                          str(e.get("split")) != "test"))


def score_of(evaluation: dict) -> float | None:
    value = evaluation.get("value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        return None
    return float(value)


def _git(repo: Path, *args: str, binary: bool = False, stdin: bytes | None = None):
    result = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(repo), *args], input=stdin,
                            env={**os.environ, **_GIT_ENV}, capture_output=True)
    if result.returncode != 0:
        raise RepoError(f"git {' '.join(args)}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout if binary else result.stdout.decode(errors="replace").strip()


def _blob(repo: Path, blob: str) -> bytes:
    return _git(repo, "cat-file", "blob", blob, binary=True)


def _parse_lfs_pointer(data: bytes) -> tuple[str, int] | None:
    if not data.startswith(_LFS_HEADER) or len(data) > 1024:
        return None
    fields = dict(line.split(" ", 1) for line in data.decode(errors="replace").splitlines() if " " in line)
    oid, size = fields.get("oid", ""), fields.get("size", "")
    if oid.startswith("sha256:") and len(oid) == 71 and size.isdigit():
        return oid[7:], int(size)
    return None


def _json_object(repo: Path, blobs: dict, path: str, required: bool) -> dict:
    if path not in blobs:
        if required:
            raise RepoError(f"has no {path}")
        return {}
    data = _blob(repo, blobs[path][0])
    if len(data) > _MAX_TEXT:
        raise RepoError(f"{path} is {len(data)} bytes: not a zoo file")
    try:
        value = json.loads(data)
    except ValueError as error:
        raise RepoError(f"{path} is not JSON ({error})") from None
    if not isinstance(value, dict):
        raise RepoError(f"{path} is not a JSON object")
    return value


def read_repo(repo: Path, repo_id: str) -> Model:
    """One mirror repo at its `main` commit: zoo.json, config.json, the card and every file's size and sha256."""
    commit = _git(repo, "rev-parse", "--verify", "main^{commit}")
    blobs = {}
    for line in _git(repo, "ls-tree", "-r", "-l", "-z", commit).split("\0"):
        if not line:
            continue
        info, path = line.split("\t", 1)
        mode, kind, blob, size = info.split()
        if kind == "blob" and not mode.startswith("12"):  # symlinks in a repo are not files a user downloads
            blobs[path] = (blob, int(size))
    meta = _json_object(repo, blobs, META, required=True)
    config = _json_object(repo, blobs, CONFIG, required=False)
    card = ""
    if CARD in blobs and blobs[CARD][1] <= _MAX_TEXT:
        card = _blob(repo, blobs[CARD][0]).decode("utf-8", errors="replace")
    files = []
    for path, (blob, size) in sorted(blobs.items()):
        if path == ".gitattributes":
            continue
        data = _blob(repo, blob) if size <= _MAX_TEXT else b""
        pointer = _parse_lfs_pointer(data)
        if pointer:
            files.append(FileRecord(path, pointer[1], pointer[0], True))
        else:
            files.append(FileRecord(path, size, hashlib.sha256(data).hexdigest() if data or not size else "", False))
    name = meta.get("name")
    return Model(name=name if isinstance(name, str) and name else repo_id, repo_id=repo_id, commit=commit, meta=meta,
                 config=config, card=card, files=files)


def mirror_repos(mirror_root: str | os.PathLike) -> list[tuple[str, Path]]:
    """(repo_id, folder) of every model repo: <root>/models/<org>/<name> holding a git repo. Symlinked
    folders are skipped: the site describes what the mirror itself holds."""
    models = Path(mirror_root) / "models"
    found = []
    if not models.is_dir():
        return found
    for org in sorted(models.iterdir()):
        if org.is_symlink() or not org.is_dir() or org.name.startswith("."):
            continue
        for repo in sorted(org.iterdir()):
            if repo.is_symlink() or not repo.is_dir() or repo.name.startswith(".") or not (repo / ".git").exists():
                continue
            found.append((f"{org.name}/{repo.name}", repo))
    return found


def collect(mirror_root: str | os.PathLike, catalog: dict | None = None) -> tuple[list[Model], list[tuple[str, str]]]:
    """All readable models (sorted by name) and (repo_id, reason) for repos that could not be read."""
    if catalog is None:
        from ..catalog import catalog as load_catalog
        catalog = load_catalog()
    by_repo = {}
    for name, entry in (catalog.get("models") or {}).items():
        if isinstance(entry, dict) and isinstance(entry.get("repo_id"), str):
            by_repo.setdefault(entry["repo_id"], (name, entry))
    bases = {str(base): str(arch) for arch, base in (catalog.get("bases") or {}).items()}
    models, problems = [], []
    for repo_id, folder in mirror_repos(mirror_root):
        try:
            model = read_repo(folder, repo_id)
        except (RepoError, OSError, UnicodeError) as error:
            problems.append((repo_id, str(error)))
            continue
        if repo_id in by_repo:
            model.catalog_name, entry = by_repo[repo_id]
            model.pinned_revision = entry.get("revision")
            if model.catalog_name in bases:
                model.derived_names = [f"base-{d}-{bases[model.catalog_name]}" for d in model.bn_variants]
        models.append(model)
    return sorted(models, key=lambda m: m.name), problems
