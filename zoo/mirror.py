"""Publishing to a Hub-compatible mirror (olah) and recording what was published in a catalog.

A mirror repo is a plain git repo (branch ``main``) at ``<root>/models/<org>/<name>`` (datasets:
``<root>/datasets/<org>/<name>``, which `datasets.load_dataset` reads through olah too) whose
``*.safetensors`` are git-LFS pointers with the objects under ``.git/lfs/objects`` — the layout
the Hub itself uses, so olah answers HEAD with ``ETag = sha256`` for them and huggingface_hub
names the cached blob by that sha256. Commits use a fixed author and date, so publishing the
same checkpoint folder twice gives the same commit id (the catalog's pinned revision).
This is how an air-gapped site hosts the zoo; tests and the demo do the same on loopback.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .checkpoint import CONFIG, META, dump_json, read_json
from .errors import ZooError
from .integrity import sha256_file

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # part of the pinned commits: changing it changes them
_FIXED_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "hpt-zoo", "GIT_AUTHOR_EMAIL": "zoo@localhost", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "hpt-zoo", "GIT_COMMITTER_EMAIL": "zoo@localhost",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_FIXED_GIT_IDENTITY, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    result = subprocess.run(["git", "-C", str(repo), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise ZooError(f"git {' '.join(args)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def lfs_pointer(sha256: str, size: int) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


REPO_TYPES = {"model": "models", "dataset": "datasets"}


def repo_path(mirror_root: str | os.PathLike, repo_id: str, repo_type: str = "model") -> Path:
    if repo_type not in REPO_TYPES:
        raise ZooError(f"repo_type must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}")
    return Path(mirror_root) / REPO_TYPES[repo_type] / repo_id


def publish_to_mirror(checkpoint_dir: str | os.PathLike, mirror_root: str | os.PathLike, repo_id: str,
                      repo_type: str = "model") -> str:
    """Commit the folder's files into the mirror repo (created fresh) and return the commit id.
    A dataset folder needs a README.md (its card): `datasets` reads it first and, served by olah,
    a repo without one looks absent."""
    checkpoint_dir = Path(checkpoint_dir)
    target = repo_path(mirror_root, repo_id, repo_type)
    staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=target.parent if target.parent.exists() else None))
    try:
        _git(staging, "init", "-q", "-b", "main")
        for source in sorted(p for p in checkpoint_dir.rglob("*") if p.is_file()):
            relative = source.relative_to(checkpoint_dir)
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            if source.name.endswith(LFS_SUFFIXES):
                digest, size = sha256_file(source), source.stat().st_size
                destination.write_text(lfs_pointer(digest, size))
                obj = staging / ".git" / "lfs" / "objects" / digest[:2] / digest[2:4] / digest
                obj.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, obj)
            else:
                shutil.copyfile(source, destination)
        (staging / ".gitattributes").write_text("".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n"
                                                        for s in LFS_SUFFIXES))
        _git(staging, "add", "-A")
        name = read_json(checkpoint_dir / META).get("name", repo_id) if (checkpoint_dir / META).exists() else repo_id
        _git(staging, "commit", "-q", "-m", f"publish {name}")
        commit = _git(staging, "rev-parse", "HEAD")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        return commit
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def catalog_entry(checkpoint_dir: str | os.PathLike, repo_id: str, revision: str) -> dict:
    """The catalog record of a published folder: everything load/info need without a download."""
    checkpoint_dir = Path(checkpoint_dir)
    meta, config = read_json(checkpoint_dir / META), read_json(checkpoint_dir / CONFIG)
    files = {str(p.relative_to(checkpoint_dir)): {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(checkpoint_dir.rglob("*")) if p.is_file()}
    from .names import ARCH_ALIASES

    entry = {
        "repo_id": repo_id, "revision": revision, "files": files,
        "timm_arch": config["architecture"], "num_classes": config.get("num_classes", 0),
        "num_features": config.get("num_features"), "pretrained_cfg": config.get("pretrained_cfg", {}),
        "arch": meta.get("arch") or ARCH_ALIASES.get(config["architecture"], config["architecture"]),
    }
    for key in ("strategy", "method", "domain", "lineage", "steps", "hyperparameters", "evaluations", "summary",
                "license", "license_id", "bn_variants", "trunk_sha256", "data", "source"):
        if key in meta:
            entry[key] = meta[key]
    if config.get("model_args"):
        entry["model_args"] = config["model_args"]
    return entry


def update_catalog(catalog_path: str | os.PathLike, name: str, entry: dict, base_for_arch: str | None = None) -> None:
    """Add/replace one model in a catalog file (atomically); optionally mark it as the arch's BN base."""
    catalog_path = Path(catalog_path)
    data = json.loads(catalog_path.read_text()) if catalog_path.exists() else {"format_version": 1}
    data.setdefault("models", {})[name] = entry
    data.setdefault("bases", {})
    if base_for_arch:
        data["bases"][base_for_arch] = name
    temporary = catalog_path.with_name(catalog_path.name + ".tmp")
    temporary.write_text(dump_json(data))
    os.replace(temporary, catalog_path)


MODEL_CARDS = Path(__file__).resolve().parents[1] / "model_cards"


def copy_card(checkpoint_dir: str | os.PathLike, cards_dir: str | os.PathLike, name: str) -> Path:
    """model_cards/<name>.md = the card exactly as published (generated from zoo.json, never edited)."""
    cards_dir = Path(cards_dir)
    cards_dir.mkdir(parents=True, exist_ok=True)
    target = cards_dir / f"{name}.md"
    shutil.copyfile(Path(checkpoint_dir) / "README.md", target)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serve(mirror_root: str | os.PathLike, port: int | None = None, timeout: float = 60.0):
    """Run olah on loopback serving `mirror_root`; yields the endpoint URL (for HF_ENDPOINT)."""
    olah = shutil.which("olah-cli", path=os.path.dirname(sys.executable)) or shutil.which("olah-cli")
    if olah is None:
        raise ZooError("olah is not installed: pip install 'hpt-zoo[mirror]' (or pip install olah)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="olah-"))
    mirror_root = Path(mirror_root).resolve()
    (workdir / "olah.toml").write_text(
        f'[basic]\nhost = "127.0.0.1"\nport = {port}\nmirror-netloc = "127.0.0.1:{port}"\n'
        f'mirror-lfs-netloc = "127.0.0.1:{port}"\nrepos-path = "{workdir / "repos"}"\n'
        f'mirrors-path = ["{mirror_root}"]\n[accessibility]\noffline = true\n')
    log = open(workdir / "olah.log", "wb")
    process = subprocess.Popen([olah, "-c", str(workdir / "olah.toml")], cwd=workdir, stdout=log,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise ZooError(f"olah did not start on port {port}: {(workdir / 'olah.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
