"""Typed errors: each message says what went wrong and how to fix it."""
from __future__ import annotations

import difflib


class ZooError(Exception):
    """Base class of every error the zoo raises on purpose (the CLI turns them into exit code 2)."""


def close_matches(word: str, candidates, n: int = 3) -> list[str]:
    return difflib.get_close_matches(word, sorted(set(candidates)), n=n, cutoff=0.5)


class UnknownNameError(ZooError, KeyError):
    """A model, domain, architecture or strategy name that is not known."""

    def __init__(self, kind: str, name: str, candidates, hint: str = ""):
        self.kind, self.name = kind, name
        self.suggestions = close_matches(name, candidates)
        message = f"unknown {kind} {name!r}"
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
