"""A git mirror of Hub repos (what olah serves), and ``serve`` to run olah on loopback.

A mirror repo is a plain git repo (branch ``main``) at ``<root>/models/<org>/<name>`` (datasets:
``<root>/datasets/<org>/<name>``, which `datasets.load_dataset` reads through olah too) whose
``*.safetensors`` are git-LFS pointers with the objects under ``.git/lfs/objects`` — the layout
the Hub itself uses, so olah answers HEAD with ``ETag = sha256`` for them and huggingface_hub
names the cached blob by that sha256.

History is kept: a publish adds one commit on top of ``main`` (nothing when the files are
unchanged), so every revision a catalog ever pinned keeps being served. Commits are built with
git plumbing (blobs, a private index, ``commit-tree``) and become visible by one compare-and-swap
``update-ref``: a failure at any point leaves ``main`` where it was (at worst some unreferenced
objects). Repos are never checked out, so their work trees stay empty. A new repo is assembled
in a staging folder inside the mirror root (same filesystem) and renamed into place. Commits
use a fixed author and date, so publishing the same files onto the same history gives the same
commit id (the demo rebuilds the default model's repo and gets the commit the catalog pins).
This is how an air-gapped site hosts the zoo; tests and the demo do the same on loopback.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .errors import ZooError
from .integrity import sha256_file

LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # part of the pinned commits: changing it changes them
GITATTRIBUTES = "".join(f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES)
_FIXED_GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "hpt-zoo", "GIT_AUTHOR_EMAIL": "zoo@localhost", "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_NAME": "hpt-zoo", "GIT_COMMITTER_EMAIL": "zoo@localhost",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
}
REPO_TYPES = {"model": "models", "dataset": "datasets"}
# The Hub's rules (huggingface_hub.utils.validate_repo_id) plus "an org is required": org/name.
_REPO_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")


def check_repo_id(repo_id) -> str:
    """`org/name` by the Hub's rules, or ZooError naming the rule (never a path: no '..', no '/' tricks)."""
    shown = repr(repo_id)[:120]
    if not isinstance(repo_id, str) or repo_id.count("/") != 1:
        raise ZooError(f"repo id {shown} must be 'org/name' (one '/'), e.g. 'my-lab/hpt-chexpert-r50'")
    if len(repo_id) > 96:
        raise ZooError(f"repo id {shown} is longer than the Hub's 96 characters; choose a shorter name")
    for part in repo_id.split("/"):
        if not _REPO_PART.match(part) or ".." in part or "--" in part or part.endswith((".git", ".")):
            raise ZooError(f"repo id {shown}: {part!r} is not a valid Hub name (letters, digits, '-', '_', '.'; "
                           f"starting with a letter or digit; no '--' or '..'; not ending in '.git' or '.')")
    return repo_id


def _git(repo: Path, *args: str, stdin: bytes | None = None, env: dict | None = None) -> str:
    full_env = {**os.environ, **_FIXED_GIT_IDENTITY, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
                **(env or {})}
    result = subprocess.run(["git", "-C", str(repo), *args], env=full_env, capture_output=True, input=stdin)
    if result.returncode != 0:
        raise ZooError(f"git {' '.join(args[:2])} failed in {repo}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode().strip()


def lfs_pointer(sha256: str, size: int) -> str:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"


def repo_path(mirror_root: str | os.PathLike, repo_id: str, repo_type: str = "model") -> Path:
    """The repo's folder, checked to lie inside `mirror_root` (no symlinked org or repo leading out)."""
    if repo_type not in REPO_TYPES:
        raise ZooError(f"repo_type must be one of {', '.join(REPO_TYPES)}, not {repo_type!r}")
    check_repo_id(repo_id)
    root = Path(mirror_root).resolve()
    target = root / REPO_TYPES[repo_type] / repo_id
    for path in (target.parent.parent, target.parent, target):
        if path.is_symlink():
            raise ZooError(f"{path} is a symbolic link; a mirror's folders must be real folders inside {root}")
    return target


def _main_head(repo: Path) -> str | None:
    """The commit refs/heads/main points at, or None for a repo without one yet."""
    try:
        return _git(repo, "rev-parse", "--verify", "-q", "refs/heads/main")
    except ZooError:
        return None


def head_commit(mirror_root: str | os.PathLike, repo_id: str, repo_type: str = "model") -> str | None:
    """The repo's current main commit in the mirror, or None when the mirror does not hold the repo."""
    target = repo_path(Path(mirror_root).resolve(), repo_id, repo_type)
    return _main_head(target) if (target / ".git").is_dir() else None


def _mirror_lock(root: Path):
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(root / ".zoo-publish.lock"))


def commit_files(mirror_root: str | os.PathLike, repo_id: str, files: dict[str, bytes | Path], message: str,
                 repo_type: str = "model") -> str:
    """Make `files` (path in repo -> bytes or a file to copy) the next commit of the repo; return its id.

    Everything is validated before anything is written; the commit appears atomically.
    """
    root = Path(mirror_root).resolve()
    target = repo_path(root, repo_id, repo_type)
    for name in files:
        parts = Path(name).parts
        if not name or Path(name).is_absolute() or ".." in parts or parts[0] == ".git" or "\\" in name:
            raise ZooError(f"refusing to publish a file named {name!r}: paths in a repo must stay inside it")
    with _mirror_lock(root):
        if target.exists():
            if not (target / ".git").is_dir():
                raise ZooError(f"{target} exists but is not a mirror repo (no .git); move it away first")
            return _commit(target, files, message)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.publish-", dir=target.parent))  # same filesystem
        try:
            _git(staging, "init", "-q", "-b", "main")
            commit = _commit(staging, files, message)
            os.rename(staging, target)
            return commit
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise


def _commit(repo: Path, files: dict[str, bytes | Path], message: str) -> str:
    lfs_objects = repo / ".git" / "lfs" / "objects"
    index = Path(tempfile.mkstemp(prefix="index-", dir=repo / ".git")[1])
    index.unlink()  # git wants to create it
    env = {"GIT_INDEX_FILE": str(index)}
    try:
        entries = {".gitattributes": GITATTRIBUTES.encode()}
        for name, content in files.items():
            if name.endswith(LFS_SUFFIXES):
                source = Path(content) if not isinstance(content, bytes) else None
                digest = sha256_file(source) if source else hashlib.sha256(content).hexdigest()
                size = source.stat().st_size if source else len(content)
                obj = lfs_objects / digest[:2] / digest[2:4] / digest
                if not obj.exists():  # content-addressed: an existing object is the same bytes
                    obj.parent.mkdir(parents=True, exist_ok=True)
                    temporary = obj.with_name(f".{digest}.{os.getpid()}.tmp")
                    if source:
                        shutil.copyfile(source, temporary)
                    else:
                        temporary.write_bytes(content)
                    os.replace(temporary, obj)
                entries[name] = lfs_pointer(digest, size).encode()
            else:
                entries[name] = content if isinstance(content, bytes) else Path(content).read_bytes()
        for name, data in sorted(entries.items()):
            blob = _git(repo, "hash-object", "-w", "--stdin", stdin=data)
            _git(repo, "update-index", "--add", "--cacheinfo", f"100644,{blob},{name}", env=env)
        tree = _git(repo, "write-tree", env=env)
    finally:
        index.unlink(missing_ok=True)
    head = _main_head(repo)
    if head and _git(repo, "rev-parse", f"{head}^{{tree}}") == tree:
        return head  # same files as the current revision: nothing to commit, same pin
    commit = _git(repo, "commit-tree", tree, *(["-p", head] if head else []), "-m", message)
    _git(repo, "update-ref", "refs/heads/main", commit, head or "0" * 40)  # compare-and-swap
    return commit


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def serve(mirror_root: str | os.PathLike, port: int | None = None, timeout: float = 60.0):
    """Run olah on loopback serving `mirror_root`; yields the endpoint URL (for HF_ENDPOINT)."""
    root = Path(mirror_root)
    if not root.is_dir():
        raise ZooError(f"mirror root {root} does not exist; publish into it first (`zoo publish DIR --mirror {root} "
                       f"--repo-id ORG/NAME`) or pass the folder that holds models/ and datasets/")
    if not any((root / kind).is_dir() for kind in REPO_TYPES.values()):
        raise ZooError(f"{root} holds no models/ or datasets/ folder: it is not a mirror root (olah would serve "
                       f"nothing); publish into it first or pass the right folder")
    if port is not None and not _port_free(port):
        raise ZooError(f"port {port} on 127.0.0.1 is already in use (another server answers there); pass another "
                       f"--port or omit it to pick a free one")
    olah = shutil.which("olah-cli", path=os.path.dirname(sys.executable)) or shutil.which("olah-cli")
    if olah is None:
        raise ZooError("olah is not installed: pip install 'hpt-zoo[mirror]' (or pip install olah)")
    port = port or free_port()
    workdir = Path(tempfile.mkdtemp(prefix="olah-"))
    mirror_root = root.resolve()
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
            if process.poll() is not None or time.monotonic() > deadline:
                raise ZooError(f"olah did not start on port {port}: {(workdir / 'olah.log').read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                if process.poll() is None:  # our olah answers (not a server that grabbed the port meanwhile)
                    break
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)  # olah's whole session: it may have started workers
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        shutil.rmtree(workdir, ignore_errors=True)
