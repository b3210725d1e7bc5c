"""Every option of every detector and the engine's, gathered for the CLI and for config files
(torch-free: ``defectscope --help`` reads it).

Precedence, lowest to highest: the dataclass defaults < a config file < the command line.
A config file (JSON, TOML or YAML) holds option names as keys, optionally ``model``/``models``,
``data`` and ``categories``, and optionally one table per detector (``[padim]``) whose options
apply to that detector only. A run's saved ``config.json`` is such a file.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from defectscope.config import Options, field_help, field_types
from defectscope.engine.rules.settings import ENGINE_NAMES, EngineOptions
from defectscope.errors import ConfigError, unknown_name
from defectscope.models import DETECTORS, detector_info

#: keys of a config file that are not options
RUN_KEYS = ("model", "models", "data", "categories")


def option_owners() -> dict[str, list[str]]:
    """``{option: [detectors that take it]}``; engine options are taken by every detector."""
    owners: dict[str, list[str]] = {}
    for name, info in DETECTORS.items():
        for key in info.config.names():
            owners.setdefault(key, []).append(name)
    for key in ENGINE_NAMES:
        owners[key] = list(DETECTORS)
    return owners


def catalogue() -> dict[str, tuple[Any, str]]:
    """``{option: (annotation, help)}`` over every detector and the engine, for the CLI.

    Where detectors share an option name with different defaults, the help names each default.
    """
    out: dict[str, tuple[Any, str]] = {}
    sources = [(info.name, info.config) for info in DETECTORS.values()]
    sources.append(("engine", EngineOptions))
    defaults: dict[str, list[str]] = {}
    for owner, cls in sources:
        helps, types = field_help(cls), field_types(cls)
        for f in dataclasses.fields(cls):
            text, _, default = helps[f.name].rpartition(" [default: ")
            defaults.setdefault(f.name, []).append(f"{owner} {default.rstrip(']')}")
            out.setdefault(f.name, (types[f.name], text))
    return {
        k: (
            kind,
            f"{text} [default: {', '.join(defaults[k])}]"
            if len(defaults[k]) > 1
            else f"{text} [default: {defaults[k][0].split(' ', 1)[1]}]",
        )
        for k, (kind, text) in out.items()
    }


#: a config file holds a few dozen options: anything larger is refused before it is parsed
MAX_CONFIG_BYTES = 1 << 20


def _load_yaml(text: str) -> Any:
    """YAML without aliases: an option value never needs one, and nested aliases expand to
    gigabytes from a few hundred bytes (the "billion laughs")."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise yaml.YAMLError(f"aliases (*{event.anchor}) are not allowed in config files")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=NoAliases)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A config file as a dict: JSON, TOML (``.toml``) or YAML (``.yaml``/``.yml``)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file not found: {file}")
    if file.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {file} is {file.stat().st_size:,} bytes; a config file is at most "
            f"{MAX_CONFIG_BYTES:,}"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {file} is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise ConfigError(f"config file {file} cannot be read: {exc.strerror}") from exc
    suffix = file.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            data = _load_yaml(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - every parser failure means the same to the user
        kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(suffix, "JSON")
        raise ConfigError(f"config file {file} is not valid {kind}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {file} must hold a mapping of option names to values, "
            f"got a {type(data).__name__}"
        )
    for key, value in data.items():
        if not isinstance(key, str):
            raise ConfigError(f"config file {file}: key {key!r} is not an option name (a string)")
        if key == "model" and not isinstance(value, str):
            raise ConfigError(f"config file {file}: model must be a detector name, got {value!r}")
        if key == "data" and not isinstance(value, str):
            raise ConfigError(f"config file {file}: data must be a folder path, got {value!r}")
        if key in ("models", "categories") and not (
            isinstance(value, list) and value and all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(f"config file {file}: {key} must be a list of names, got {value!r}")
        if key in DETECTORS and isinstance(value, dict):
            bad = [k for k in value if not isinstance(k, str)]
            if bad:
                raise ConfigError(f"config file {file}: [{key}] key {bad[0]!r} is not a name")
    return data


def resolve_params(
    models: Sequence[str],
    file_values: Mapping[str, Any],
    cli_values: Mapping[str, Any],
    *,
    where: str = "",
) -> dict[str, dict[str, Any]]:
    """Per detector, the options given for it: file < command line, per-detector tables last.

    An option that none of ``models`` takes is an error (never silently dropped). In a
    multi-detector run, an option applies to the detectors that take it.

    Returns:
        ``{model: {option: value}}`` holding only what was given (the rest stays at defaults).
    """
    for name in models:
        detector_info(name)
    owners = option_owners()
    tables = {k: v for k, v in file_values.items() if k in DETECTORS}
    flat = {k: v for k, v in file_values.items() if k not in DETECTORS and k not in RUN_KEYS}
    for key in flat:
        if key not in owners:
            raise ConfigError(where + unknown_name("option", key, [*owners, *RUN_KEYS]))
    merged = {**flat, **{k: v for k, v in cli_values.items() if v is not None}}
    for key in merged:
        takers = [m for m in models if m in owners[key]]
        if not takers:
            raise ConfigError(
                f"option {key} does not apply to {', '.join(models)} (it is an option of "
                f"{', '.join(owners[key])}); remove it or choose another --model"
            )
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        taken = set(detector_info(name).config.names()) | set(ENGINE_NAMES)
        params = {k: v for k, v in merged.items() if k in taken}
        table = tables.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{where}[{name}] must be a table of options")
        for key in table:
            if key not in taken:
                raise ConfigError(
                    where + f"[{name}]: " + unknown_name(f"{name} option", key, taken)
                )
        out[name] = {**params, **table}
    for name in tables:
        if name not in models:
            raise ConfigError(
                f"{where}a [{name}] table is given but {name} is not among the models run "
                f"({', '.join(models)})"
            )
    return out


def split_params(name: str, params: Mapping[str, Any]) -> tuple[Options, EngineOptions]:
    """Build and validate ``(detector config, engine options)`` from one flat parameter dict."""
    config_cls = detector_info(name).config
    own = {k: v for k, v in params.items() if k in config_cls.names()}
    engine = {k: v for k, v in params.items() if k in ENGINE_NAMES}
    rest = sorted(set(params) - set(own) - set(engine))
    if rest:
        raise ConfigError(
            unknown_name(f"{name} option", rest[0], [*config_cls.names(), *ENGINE_NAMES])
        )
    return config_cls(**own), EngineOptions(**engine)
