"""Verified files from the Hub: huggingface_hub does the download, cache and locking; we check sha256.

Warm path: ``try_to_load_from_cache`` (filesystem only) + a stamp check (integrity.py), so a load
of a cached, unchanged file makes no network call and hashes nothing. A corrupt or truncated
cached blob is re-fetched once; if the fresh copy is also wrong, IntegrityError. A read-only cache
(a shared, pre-filled one) works: valid files are used as they are; a corrupt one is reported with
the fix instead of being removed.
"""
from __future__ import annotations

import os
import re
import warnings

from .catalog import Entry
from .errors import (IntegrityError, InvalidArgumentError, NotCachedError, UnknownRevisionError,
                     UnpinnedRevisionWarning, shorten)
from .integrity import is_verified

# A git commit, or a branch/tag name made of the characters the Hub allows (no "..", no leading "-").
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_REF = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,199}$")


def check_revision(entry: Entry, revision) -> str | None:
    """None, or a syntactically valid revision; warns when it is a branch or tag (not pinned)."""
    if revision is None:
        return None
    if not isinstance(revision, str) or not _REF.match(revision) or ".." in revision or revision.endswith(
            (".lock", "/", ".")):
        raise InvalidArgumentError(f"revision must be a commit hash (40 hex characters) or a branch/tag name, not "
                                   f"{shorten(revision)}; the catalog pins {entry.name} at {entry.revision}")
    if not _COMMIT.match(revision) and revision != entry.revision:
        warnings.warn(f"revision={revision!r} is a branch or tag, not a commit: {entry.name}'s files are checked only "
                      f"against the zoo.json that the server itself returns for it, not against the catalog. Pin a "
                      f"commit (the catalog's is {entry.revision}) to get files that cannot change.",
                      UnpinnedRevisionWarning, stacklevel=4)
    return revision


def resolve_revision(entry: Entry, revision: str) -> str:
    """The commit a revision other than the catalog's names, asked once (one request, no retries).

    A server answers an unknown revision with 401, 404 or 500 (olah); huggingface_hub would retry a
    500 for half a minute and then blame HF_HUB_OFFLINE, or ask to log in for a 401. Offline, the
    cache's own refs decide (huggingface_hub reads them)."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if revision == entry.revision or constants.HF_HUB_OFFLINE:
        return revision
    for attempt in range(2):  # one retry for a dropped connection (olah resets the first unknown lookup)
        try:
            commit = HfApi().model_info(entry.repo_id, revision=revision, timeout=10).sha
            break
        except OfflineModeIsEnabled:
            return revision
        except HfHubHTTPError as error:
            status = getattr(getattr(error, "response", None), "status_code", None)
            raise UnknownRevisionError(f"{entry.name}: the server (HF_ENDPOINT) does not know revision "
                                       f"{shorten(revision)} of {entry.repo_id} (HTTP {status}); the catalog pins "
                                       f"{entry.revision} (leave revision= out to use it)") from None
        except Exception as error:
            if not _network_error(error):
                raise
            if attempt:
                raise NotCachedError(f"{entry.name}: cannot look up revision {shorten(revision)} "
                                     f"({type(error).__name__}: {shorten(str(error), 200)}). {_offline_fix(entry)}") from None
    return commit or revision


def _network_error(error: BaseException) -> bool:
    """Connection refused/reset, timeout: OSError, or httpx's own errors (which are not OSError)."""
    library = type(error).__module__.split(".")[0].rstrip("0123456789")  # httpx, or a vendored httpx2
    return isinstance(error, OSError) or library == "httpx"  # (httpx wraps httpcore's errors in its own)


def _offline_fix(entry: Entry) -> str:
    return (f"It is not in the local cache and HF_HUB_OFFLINE is set (or the Hub is unreachable). "
            f"Prefetch it while online with `zoo download {entry.name}` (uses HF_HOME / HF_HUB_CACHE), or point "
            f"HF_ENDPOINT at a mirror that serves {entry.repo_id}.")


def _repo_folder(entry: Entry) -> str:
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return os.path.realpath(os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=entry.repo_id,
                                                                                   repo_type="model")))


def _drop_cached(entry: Entry, path: str) -> None:
    """Remove a bad cached file: the snapshot link, and the blob only when it is this repo's own blob.

    A link that points anywhere else (a user's file, another repo) is removed as a link; what it
    points to is never touched, and nothing reached through a linked folder is removed."""
    repo = _repo_folder(entry)
    if not os.path.realpath(os.path.dirname(path)).startswith(repo + os.sep):
        raise IntegrityError(f"{entry.name}: the cached {path} does not match the catalog's sha256 and is reached "
                             f"through a folder link that leaves the HF cache ({repo}); it was not removed. Remove "
                             f"that link yourself, then load again.")
    victims = [path]
    target = os.path.realpath(path)
    if os.path.islink(path) and os.path.dirname(target) == os.path.join(repo, "blobs") and os.path.isfile(target):
        victims.insert(0, target)  # this repo's own blob (a regular file): huggingface_hub re-fetches it
    for victim in victims:
        try:
            os.remove(victim)  # on a symlink: removes the link itself
        except FileNotFoundError:
            pass
        except OSError as error:
            raise IntegrityError(
                f"{entry.name}: the cached {path} does not match the catalog's sha256, and it cannot be removed "
                f"({error.strerror or error}): the HF cache is read-only. Ask whoever fills it to run "
                f"`zoo download {entry.name}` there, or use a writable cache (HF_HUB_CACHE=<folder>).") from None


def _etag_timeout() -> float:
    """ZOO_ETAG_TIMEOUT: seconds to wait for the server's answer about a file (default 10)."""
    text = os.environ.get("ZOO_ETAG_TIMEOUT", "10")
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:  # also NaN
        raise InvalidArgumentError(f"ZOO_ETAG_TIMEOUT must be a number of seconds above 0, not {shorten(text)}; "
                                   f"unset it to wait 10 s")
    return seconds


def download(entry: Entry, filename: str, revision: str, force: bool = False) -> str:
    """hf_hub_download with its errors turned into zoo errors that say what to do."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{entry.repo_id}@{revision[:40]}"
    timeout = _etag_timeout()
    try:
        return hf_hub_download(entry.repo_id, filename, revision=revision, force_download=force,
                               etag_timeout=timeout)
    except LocalEntryNotFoundError as error:
        raise NotCachedError(f"{entry.name}: cannot get {filename} from {where}. {_offline_fix(entry)} "
                             f"({type(error).__name__})") from None
    except RevisionNotFoundError:
        raise UnknownRevisionError(f"{entry.name}: {entry.repo_id} has no revision {shorten(revision)}; the catalog "
                                   f"pins {entry.revision} (leave revision= out to use it)") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as error:
        # servers answer 401/404 alike for a revision or repo they do not have: never ask to log in for it
        raise UnknownRevisionError(f"{entry.name}: {filename} is not available from {where} on the server "
                                   f"(HF_ENDPOINT); check the revision (the catalog pins {entry.revision}) "
                                   f"({type(error).__name__})") from None
    except PermissionError as error:
        from huggingface_hub import constants
        raise NotCachedError(f"{entry.name}: {filename} is not in the HF cache, and the cache ({constants.HF_HUB_CACHE}) "
                             f"is read-only for you ({error.strerror}): ask its owner to run `zoo download "
                             f"{entry.name}` there, or set HF_HUB_CACHE to a writable folder.") from None
    except (HfHubHTTPError, OSError) as error:
        raise NotCachedError(f"{entry.name}: cannot get {filename} from {where}: "
                             f"{shorten(str(error), 200)}. {_offline_fix(entry)}") from None
    except Exception as error:  # a connection reset mid-request: httpx's errors are not OSError
        if not _network_error(error):
            raise
        raise NotCachedError(f"{entry.name}: cannot get {filename} from {where} ({type(error).__name__}: "
                             f"{shorten(str(error), 200)}). {_offline_fix(entry)}") from None


def fetch(entry: Entry, filename: str, revision: str | None = None, expected: dict | None = None) -> str:
    """Local path of a verified copy of `filename` from the entry's repo at its pinned revision."""
    from huggingface_hub import try_to_load_from_cache

    revision = revision or entry.revision
    expected = expected or entry.file(filename)
    sha256, size = expected["sha256"], expected["size"]
    cached = try_to_load_from_cache(entry.repo_id, filename, revision=revision)
    dropped_corrupt = False
    if isinstance(cached, str):
        if is_verified(cached, sha256, size):
            return cached
        _drop_cached(entry, cached)  # corrupt or truncated: never trust it, fetch once more below
        dropped_corrupt = True
    from .endpoint import unreachable_reason

    unreachable = unreachable_reason()  # ~1 s instead of huggingface_hub's ~30 s of retries
    if unreachable:
        error_type = IntegrityError if dropped_corrupt else NotCachedError
        raise error_type(f"{entry.name}: cannot get {filename} of {entry.repo_id}@{revision[:12]}: {unreachable}"
                         f"{' (the cached copy was corrupt and was removed)' if dropped_corrupt else ''}. "
                         f"{_offline_fix(entry)}")
    for attempt in range(2):
        try:
            path = download(entry, filename, revision, force=attempt > 0)
        except NotCachedError:
            if dropped_corrupt:
                raise IntegrityError(f"{entry.name}: the cached {filename} was corrupt (sha256/size mismatch) and was "
                                     f"removed, and a fresh copy cannot be fetched now. {_offline_fix(entry)}") from None
            raise
        if is_verified(path, sha256, size):
            return path
        _drop_cached(entry, path)
    raise IntegrityError(f"{entry.name}: {filename} from {entry.repo_id}@{revision[:12]} does not match the "
                         f"catalog (sha256 {sha256[:12]}..., {size} bytes) even after a fresh download. The server "
                         f"or mirror serves different bytes than were published; report it, do not use them.")
