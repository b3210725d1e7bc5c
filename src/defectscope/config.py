"""Frozen option dataclasses: every option declared, typed and documented once.

Detector configurations (``models/*/config.py``) and the engine's options are subclasses of
:class:`Options`. The CLI flags, the keys of a config file, the Python constructors
(``defectscope.PaDiM(n_features=...)``) and the JSON saved with a model are all generated from
these fields, so an option cannot exist in one place and be missing in another.

This module imports neither torch nor numpy: ``defectscope --help`` reads it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, ClassVar

from defectscope.errors import ConfigError, unknown_name


def option(default: Any, help: str, *, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its one-line documentation (and the allowed strings, if any)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


def _describe(kind: Any) -> str:
    if kind is type(None):
        return "None"
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(k) for k in typing.get_args(kind))
    if origin is tuple:
        item = typing.get_args(kind)[0]
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(item, "items")
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        kind, str(kind)
    )


def _coerce(kind: Any, value: Any) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` checked against the annotation ``kind`` (lists -> tuples,
    integers -> floats); never parses strings, so ``"abc"`` is not an int."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        for option_kind in typing.get_args(kind):
            ok, out = _coerce(option_kind, value)
            if ok:
                return True, out
        return False, value
    if kind is type(None):
        return value is None, value
    if origin is tuple:
        (item,) = typing.get_args(kind)[:1]
        if isinstance(value, (list, tuple)) and value:
            checked = [_coerce(item, v) for v in value]
            if all(ok for ok, _ in checked):
                return True, tuple(v for _, v in checked)
        return False, value
    if kind is bool:
        return isinstance(value, bool), value
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        return False, value
    if kind is str:
        return isinstance(value, str), value
    return isinstance(value, kind), value


@dataclasses.dataclass(frozen=True)
class Options:
    """Base of every option set: type-checked and validated when built, never afterwards."""

    #: what these options configure, for error messages ("padim", "engine")
    scope: ClassVar[str] = "options"

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            ok, coerced = _coerce(hints[f.name], value)
            if not ok:
                raise ConfigError(
                    f"{self.scope} option {f.name}: expected {_describe(hints[f.name])}, "
                    f"got {value!r}"
                )
            if isinstance(coerced, float) and not math.isfinite(coerced):
                raise ConfigError(
                    f"{self.scope} option {f.name}: expected a finite number, got {value!r}"
                )
            choices = f.metadata.get("choices")
            if choices and coerced is not None and coerced not in choices:
                raise ConfigError(
                    f"{self.scope} option {f.name}: " + unknown_name(f.name, coerced, choices)
                )
            object.__setattr__(self, f.name, coerced)
        self.validate()

    def validate(self) -> None:
        """Range checks across fields; raise :class:`ConfigError` naming the option."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, where: str = "") -> Options:
        """Build from a mapping; an unknown key is an error naming the close matches."""
        unknown = [k for k in values if k not in cls.names()]
        if unknown:
            raise ConfigError(where + unknown_name(f"{cls.scope} option", unknown[0], cls.names()))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Field values, tuples as lists (JSON-ready)."""
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    def require(self, condition: bool, name: str, expected: str) -> None:
        """Raise :class:`ConfigError` for option ``name`` unless ``condition``."""
        if not condition:
            raise ConfigError(
                f"{self.scope} option {name} must be {expected}, got {getattr(self, name)!r}"
            )


def field_help(cls: type[Options]) -> dict[str, str]:
    """``{name: one-line help}`` of an option class, with its default."""
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default
        shown = list(default) if isinstance(default, tuple) else default
        choices = f.metadata.get("choices")
        extra = f" ({' | '.join(choices)})" if choices else ""
        out[f.name] = f"{f.metadata.get('help', '')}{extra} [default: {shown}]"
    return out


def field_types(cls: type[Options]) -> dict[str, Any]:
    """``{name: annotation}`` of an option class, resolved."""
    return typing.get_type_hints(cls)
