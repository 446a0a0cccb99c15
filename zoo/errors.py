"""Typed errors: each message says what went wrong and how to fix it."""
from __future__ import annotations

import difflib


MAX_MESSAGE = 990  # an error message is read by a person: long echoes of input are cut in the middle


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose (the CLI turns them into exit code 2)."""

    def __init__(self, *args):
        if args and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE:
            text = args[0]
            args = (f"{text[:MAX_MESSAGE // 2]} [...] {text[-(MAX_MESSAGE // 2 - 10):]}",) + args[1:]
        super().__init__(*args)


MAX_ECHO = 80  # characters of user input echoed back in a message


def shorten(text, limit: int = MAX_ECHO) -> str:
    """repr() of user input, cut to `limit` characters: a 100k-character name must not become the message."""
    shown = repr(text)
    return shown if len(shown) <= limit else f"{shown[:limit - 20]}...<{len(str(text))} characters>"


def close_matches(word: str, candidates, n: int = 3) -> list[str]:
    if len(word) > 4 * MAX_ECHO:  # difflib is quadratic; nothing that long is a typo of a short name
        return []
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.5)


class UnknownNameError(ZooError, KeyError):
    """A model, domain, architecture or strategy name that is not known."""

    def __init__(self, kind: str, name: str, candidates, hint: str = ""):
        self.kind, self.name = kind, name
        self.suggestions = close_matches(name, candidates)
        message = f"unknown {kind} {shorten(name)}"
        if self.suggestions:
            message += f"; did you mean {', '.join(repr(s) for s in self.suggestions)}?"
        if hint:
            message += f" {hint}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return self.args[0]


class NotPublishedError(ZooError, LookupError):
    """A valid recipe name with no published checkpoint yet."""


class NotCachedError(ZooError, FileNotFoundError):
    """Offline (HF_HUB_OFFLINE=1) and the files are not in the local cache."""


class IntegrityError(ZooError):
    """Downloaded or cached bytes do not match the catalog's sha256/size."""


class UnknownVariantError(ZooError, KeyError):
    """A BN-statistic variant that the checkpoint does not have."""

    def __str__(self) -> str:
        return self.args[0]


class IncompatibleOverlayError(ZooError):
    """A BN overlay made for another trunk."""


class CheckpointFormatError(ZooError):
    """A checkpoint folder or file that does not follow the format (missing/unexpected keys, bad metadata)."""


class UnsafeCheckpointError(ZooError):
    """A pickle that would need to execute code to load; refused."""


class InvalidArgumentError(ZooError, ValueError):
    """An argument of the wrong type or value (num_classes, dtype, device, bn, revision), refused before any download."""


class UnknownRevisionError(ZooError, LookupError):
    """A `revision=` that the repository (on HF_ENDPOINT) does not have, or that cannot be looked up now."""


class CatalogError(ZooError):
    """A catalog file (the packaged one or one listed in ZOO_CATALOG) that cannot be read or has a malformed entry."""


class IncompleteEntryError(CatalogError, AttributeError):
    """A catalog entry without a field that an operation needs (repo_id, revision, files, timm_arch, ...)."""


class UnpinnedRevisionWarning(UserWarning):
    """A branch name such as revision="main": the files are checked only against the server's own zoo.json."""


class UnverifiedCheckpointWarning(UserWarning):
    """A local folder whose files cannot be checked (no zoo.json, or no hash recorded for a file)."""


class NameMismatchError(ZooError, ValueError):
    """A checkpoint name whose strategy, domain or architecture disagrees with what the checkpoint holds."""
