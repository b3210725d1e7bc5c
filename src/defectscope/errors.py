"""Exceptions raised by defectscope.

Every message names the argument or file, what was expected, what was found and what to do.
The CLI turns any :class:`DefectscopeError` into one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DefectscopeError(Exception):
    """Base class of every error that defectscope raises on purpose."""


class DataError(DefectscopeError):
    """A data folder, image or mask is missing, unreadable or inconsistent."""


class BackboneError(DefectscopeError):
    """An unknown backbone or layer name, or weights that cannot be found."""


class ModelFileError(DefectscopeError):
    """A saved model file is missing, corrupted or written by an incompatible version."""


class NotFittedError(DefectscopeError):
    """Inference was asked of a detector that has not been fitted."""


class ConfigError(DefectscopeError):
    """An invalid parameter value or configuration file."""


class OutputError(DefectscopeError):
    """A run folder or output file cannot be created or written."""


class ScoringError(DefectscopeError):
    """Scoring produced a value that must not become a verdict (NaN, infinity)."""


def plural(word: str) -> str:
    """English plural of a one-word noun: category -> categories, backbone -> backbones."""
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    return word + ("es" if word.endswith(("s", "x", "ch", "sh")) else "s")


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> str:
    """Build the message for an unknown name, listing the valid ones and the close matches.

    Args:
        kind: what the name is, e.g. ``"backbone"``.
        name: the name that was given.
        valid: every accepted name.

    Returns:
        One sentence such as ``unknown backbone 'resnet81'; did you mean 'resnet18'? valid: ...``.
    """
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=3, cutoff=0.6)
    hint = f" did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {kind} {name!r};{hint} valid {plural(kind)}: {', '.join(valid)}"
