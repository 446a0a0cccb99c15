"""Upstream releases by name: the publisher's own file, fetched, verified, converted once, cached.

The ``upstream`` section of the catalog lists public checkpoints the zoo does not host (MoCo,
SimCLR, ...): their URL, the source format ``zoo convert`` applies, the preprocessing they were
trained and evaluated with, and what verifies them — the publisher's checksum where one is
published (MoCo's README gives the first 8 hex digits of each file's md5), otherwise trust on
first use (the sha256 of the first file imported is recorded, and a different file is refused
later). ``zoo.load(name)`` downloads the file (huggingface_hub's HTTP session), checks it,
converts it with :func:`zoo.convert.convert` (``weights_only=True``: no code from the file ever
runs) into ``$ZOO_HOME/upstream/<name>/`` under a file lock, and loads that folder. Offline,
``zoo import NAME FILE`` does the same with a file the user downloaded elsewhere.

Checksums are recorded only as published. OpenSelfSup's release names carry an 8-hex suffix
(``moco_r50_v2-e3b0c442.pth``) that is *not* a checksum of the file: ``tools/publish_model.py``
starts ``cp`` without waiting and hashes the still-empty copy, and e3b0c442 is sha256 of nothing.
The HPT authors' README lists MoCo v2 200/800 ep and SimCLR v1/v2 as the releases they build on
(all entries here); it lists no HPT-trained checkpoint, so none is catalogued.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from .catalog import UPSTREAM_NAME as _NAME, Entry
from .checkpoint import META, is_checkpoint_dir, read_json
from .errors import CheckpointFormatError, IntegrityError, NotCachedError, UnknownVariantError, ZooError
from .integrity import zoo_home

MAX_DOWNLOAD_BYTES = 4 << 30  # the largest R50 training checkpoint with optimizer state is far below this


def is_upstream(entry: Entry) -> bool:
    return entry.data.get("kind") == "upstream"


def cache_root() -> Path:
    return zoo_home() / "upstream"


def folder(entry: Entry) -> Path:
    if not _NAME.match(entry.name) or ".." in entry.name:
        raise CheckpointFormatError(f"upstream name {entry.name[:100]!r} is not a safe folder name")
    return cache_root() / entry.name


def _source(entry: Entry) -> dict:
    source = entry.data.get("source")
    return source if isinstance(source, dict) else {}


def import_hint(entry: Entry) -> str:
    source = _source(entry)
    checksum = (f"sha256 {source['sha256']}" if source.get("sha256") else
                f"md5 starting {source['md5_prefix']}" if source.get("md5_prefix") else "no published checksum")
    how = str(source.get("how_to_get") or f"Download {source.get('url')} ({checksum})")[:400]
    return (f"{how} on a machine with internet, copy it here, then run: "
            f"zoo import {entry.name} /path/to/{source.get('file', 'FILE')}")


def cached(entry: Entry) -> Path | None:
    """The converted folder, if present and made from an acceptable source file."""
    path = folder(entry)
    if not is_checkpoint_dir(path):
        return None
    recorded = read_json(path / META).get("source_checkpoint", {}).get("sha256")
    expected = _source(entry).get("sha256")
    if expected and recorded != expected:
        raise IntegrityError(f"{entry.name}: the converted copy in {path} was made from a file with sha256 "
                             f"{str(recorded)[:12]}..., not the publisher's {expected[:12]}...; delete {path} and load "
                             f"again")
    return path


def _lock(entry: Entry):
    from filelock import FileLock

    locks = cache_root() / ".locks"
    locks.mkdir(parents=True, exist_ok=True)
    return FileLock(str(locks / f"{entry.name}.lock"))


def ensure(entry: Entry) -> Path:
    """The verified, converted folder for an upstream entry: cached, downloaded or refused with the fix."""
    ready = cached(entry)
    if ready:
        return ready
    with _lock(entry):
        ready = cached(entry)  # another process may have finished while we waited
        if ready:
            return ready
        source = _source(entry)
        if not source.get("url") or not source.get("fetchable", False):
            raise NotCachedError(f"{entry.name} is not in the zoo cache ({folder(entry)}) and cannot be fetched "
                                 f"directly: {source.get('why_not_fetchable', 'no PyTorch file is published')}. "
                                 f"{import_hint(entry)}")
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            raise NotCachedError(f"{entry.name} is not in the zoo cache ({folder(entry)}) and HF_HUB_OFFLINE is set. "
                                 f"{import_hint(entry)}")
        cache_root().mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(entry)
        handle, temporary = tempfile.mkstemp(prefix=f".{entry.name}.", suffix=".incomplete", dir=cache_root())
        os.close(handle)
        try:
            _download(entry, source["url"], Path(temporary))
            return _import_locked(entry, Path(temporary), source["url"])
        finally:
            Path(temporary).unlink(missing_ok=True)


def _remove_stale_temporaries(entry: Entry) -> None:
    """A killed download or conversion leaves `.<name>.<random>[.incomplete]`; we hold the name's lock, so any
    such entry is stale. Links are unlinked, never followed."""
    pattern = re.compile(rf"^\.{re.escape(entry.name)}\.[A-Za-z0-9_]{{6,12}}(\.incomplete)?$")
    for path in cache_root().iterdir():
        if not pattern.match(path.name):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _download(entry: Entry, url: str, target: Path) -> None:
    """One GET through huggingface_hub's HTTP session (proxies, headers); no silent retries for minutes."""
    if not url.startswith(("https://", "http://")):
        raise CheckpointFormatError(f"{entry.name}: source URL {url[:200]!r} is not http(s)")
    from huggingface_hub.utils import get_session

    session = get_session()
    http = sys.modules[type(session).__module__.split(".")[0]]  # the httpx flavour huggingface_hub uses
    written = 0
    try:
        with session.stream("GET", url, follow_redirects=True, timeout=http.Timeout(5.0, read=120.0)) as response:
            if response.status_code != 200:
                raise NotCachedError(f"{entry.name}: {url} answered HTTP {response.status_code}. {import_hint(entry)}")
            with open(target, "wb") as output:
                for chunk in response.iter_bytes(1 << 20):
                    written += len(chunk)
                    if written > MAX_DOWNLOAD_BYTES:
                        raise IntegrityError(f"{entry.name}: {url} sends more than {MAX_DOWNLOAD_BYTES >> 30} GiB; "
                                             f"refused (not the published checkpoint)")
                    output.write(chunk)
    except http.HTTPError as error:
        raise NotCachedError(f"{entry.name}: cannot download {url} ({type(error).__name__}: {str(error)[:120]}). "
                             f"{import_hint(entry)}") from None


def _digests(path: Path) -> tuple[str, str]:
    sha256, md5 = hashlib.sha256(), hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            sha256.update(block)
            md5.update(block)
    return sha256.hexdigest(), md5.hexdigest()


def verify_source(entry: Entry, path: Path) -> dict:
    """Check a source file against what the publisher published; returns how it was verified."""
    source = _source(entry)
    sha256, md5 = _digests(path)
    if source.get("sha256"):
        if sha256 != source["sha256"]:
            raise IntegrityError(f"{entry.name}: {path} has sha256 {sha256[:16]}..., but the catalog pins "
                                 f"{source['sha256'][:16]}... for {source.get('url')}. It is not the published file "
                                 f"(corrupt or replaced); do not use it.")
        return {"sha256": sha256, "verified_by": "sha256 pinned in the zoo catalog"}
    if source.get("md5_prefix"):
        if not md5.startswith(source["md5_prefix"]):
            raise IntegrityError(f"{entry.name}: {path} has md5 {md5[:8]}..., but its publisher lists "
                                 f"{source['md5_prefix']} ({source.get('checksum_source')}). It is not the published "
                                 f"file (corrupt or replaced); download it again.")
        return {"sha256": sha256, "verified_by": f"md5 prefix {source['md5_prefix']} published by "
                                                 f"{source.get('checksum_source')} (32 bits: catches corruption, not "
                                                 f"a deliberate forgery); sha256 recorded on first use"}
    return {"sha256": sha256, "verified_by": "trust on first use: the publisher gives no checksum; this sha256 is "
                                             "recorded and a different file is refused later"}


def import_file(entry: Entry, path: str | os.PathLike, url: str | None = None) -> Path:
    """`zoo import NAME FILE`: verify a downloaded source file, convert it into the cache, return the folder."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFormatError(f"{path} is not a file; give the path of the file you downloaded from "
                                    f"{_source(entry).get('url')}")
    with _lock(entry):
        cache_root().mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(entry)
        return _import_locked(entry, path, url or _source(entry).get("url"))


def _import_locked(entry: Entry, path: Path, url: str | None) -> Path:
    from .convert import convert

    target = folder(entry)
    check = verify_source(entry, path)
    if is_checkpoint_dir(target):
        recorded = read_json(target / META).get("source_checkpoint", {}).get("sha256")
        if recorded == check["sha256"]:
            return target
        raise IntegrityError(f"{entry.name}: a different source file (sha256 {str(recorded)[:12]}...) was imported "
                             f"before into {target}; the publisher's checksum cannot tell which is right. Delete "
                             f"{target} to trust the new file (sha256 {check['sha256'][:12]}...).")
    source = _source(entry)
    meta = {key: entry.data[key] for key in ("strategy", "method", "arch", "domain", "steps", "epochs", "license",
                                             "license_id", "summary") if key in entry.data}
    meta.update(source=f"{entry.data.get('source_text', url)} Verified by: {check['verified_by']}.", upstream={"name": entry.name, "url": url, "verified_by": check["verified_by"]}, evaluations=[],
                lineage=[{"role": "base", "name": source.get("publisher_name", source.get("file")), "url": url,
                          "sha256": check["sha256"], "format": source.get("format"), "method": entry.data.get("method"),
                          "domain": entry.data.get("domain"), "steps": entry.data.get("steps")}])
    cache_root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=cache_root()))
    try:
        converted = convert(path, staging / "checkpoint", timm_arch=entry.timm_arch, name=entry.name, meta=meta,
                            source_format=source.get("format"), preprocessing=entry.data.get("preprocessing"),
                            keep_classifier=bool(entry.data.get("keep_classifier", False)), source_url=url)
        if target.exists():  # an empty or broken leftover, never a valid copy (checked above)
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        os.replace(converted, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def converted_details(entry: Entry) -> dict:
    """What zoo.info adds once converted: the folder and its trunk's sha256 (nothing is fetched)."""
    ready = cached(entry)
    if not ready:
        return {}
    meta = read_json(ready / META)
    return {"path": str(ready), "trunk_sha256": meta.get("trunk_sha256"), "weights": meta.get("weights", {}),
            "lineage": meta.get("lineage", entry.data.get("lineage", []))}


def trunk_sha256(name: str) -> str:
    """The converted trunk's sha256, converting first if needed (overlays and lineage bind to it)."""
    from .catalog import resolve

    return read_json(ensure(resolve(name)[0]) / META)["trunk_sha256"]


def folder_to_load(entry: Entry, *, bn=None, revision=None) -> Path:
    """For zoo.load of an upstream name: the cached conversion's folder (converted on first use), which the
    loader then reads like any local checkpoint folder."""
    if bn:
        raise UnknownVariantError(f"{entry.name} has no BN variants (an upstream release); make one with "
                                  f"zoo.recalibrate_bn + zoo.extract_bn on zoo.load({entry.name!r})")
    if revision:
        raise ZooError(f"{entry.name} is converted from its publisher's file, which has no revisions; drop revision=")
    return ensure(entry)


def card(entry: Entry) -> str:
    """The converted folder's card when converted; otherwise what the catalog knows."""
    ready = cached(entry)
    if ready:
        return (ready / "README.md").read_text()
    data, source = entry.data, _source(entry)
    lines = [f"# {entry.name}", "", data.get("summary", ""), "",
             f"- Source: {source.get('url')} ({source.get('format')} format, converted by `zoo convert` on first use)",
             f"- Verified by: {data.get('verification', '')}",
             f"- Preprocessing: {data.get('preprocessing')} ({data.get('preprocessing_source', '')})",
             f"- License: {data.get('license', 'unknown')}", "",
             f"Not converted yet on this machine: `zoo.load({entry.name!r})` fetches it, or {import_hint(entry)}."]
    return "\n".join(lines) + "\n"
