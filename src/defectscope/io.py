"""Model files: one ``.safetensors`` file holding the tensors and a JSON config, never pickle.

The JSON config (detector name and constructor arguments, what ``fit`` learned as scalars,
the file format version and the defectscope version) lives in the safetensors metadata
header, so a model is one file that cannot execute code when loaded. Saving writes a temporary
file next to the target and renames it, so a crash never leaves a half-written model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from defectscope.errors import ModelFileError, unknown_name

FORMAT = "defectscope-model"
FORMAT_VERSION = 1
SUFFIX = ".safetensors"


def _registry() -> dict[str, type]:
    from defectscope.models import DETECTORS

    return DETECTORS


def model_path(path: str | Path) -> Path:
    """``path`` itself if it ends in ``.safetensors``, else ``path/model.safetensors``."""
    path = Path(path)
    return path if path.suffix == SUFFIX else path / f"model{SUFFIX}"


def save_detector(detector: Any, path: str | Path) -> Path:
    """Write ``detector`` atomically; returns the file written."""
    from safetensors.torch import save_file

    from defectscope import __version__

    detector.check_fitted()
    path = model_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "detector": detector.name,
        "params": detector.get_params(),
        "fitted": detector.fitted_info(),
    }
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "defectscope_version": __version__,
        "config": json.dumps(config),
    }
    tensors = {k: v.contiguous() for k, v in detector._state_tensors().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """The JSON config of a saved model without loading its tensors."""
    from safetensors import safe_open

    path = model_path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}; train one with `defectscope fit`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - every reader failure means a damaged file
        raise ModelFileError(
            f"{path} is not a readable model file ({exc}); it may be truncated or corrupted: "
            "re-run `defectscope fit`"
        ) from exc
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a defectscope model")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise ModelFileError(
            f"{path} has model format version {version} (written by defectscope "
            f"{metadata.get('defectscope_version')}); this defectscope reads version "
            f"{FORMAT_VERSION}: re-fit the model or use the matching defectscope version"
        )
    try:
        return json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} has a damaged config ({exc}); re-run `defectscope fit`"
        ) from exc


def load(path: str | Path, **overrides: Any):
    """Load a detector saved with ``save``.

    Args:
        path: the ``.safetensors`` file, or a run folder holding ``model.safetensors``.
        overrides: constructor arguments to change for inference (e.g. ``runtime``,
            ``batch_size``, ``progress``).
    """
    from safetensors.torch import load_file

    config = read_config(path)
    registry = _registry()
    name = config.get("detector")
    if name not in registry:
        raise ModelFileError(
            f"{model_path(path)}: " + unknown_name("detector", str(name), registry)
        )
    params = {**config["params"], **overrides}
    detector = registry[name](**params)
    try:
        tensors = load_file(str(model_path(path)))
        detector._set_state(tensors, config["fitted"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFileError(
            f"{model_path(path)} is missing or has damaged tensors ({exc}); "
            "re-run `defectscope fit`"
        ) from exc
    return detector
