"""Model files: one ``.safetensors`` file holding the tensors and a JSON header, never pickle.

The header holds the detector's name and config, the engine options, what ``fit`` learned as
scalars (threshold, counts, the weights used), the file format version, the defectscope version
and a SHA-256 of the tensor data. Everything is checked on load: the config by its dataclass,
the tensors by the detector's ``restore`` (dtype, shape, index range), every value finite, and
the digests of the tensor data and of the header; any failure is a :class:`ModelFileError`
naming the file and what is wrong.

Saving writes a temporary file next to the target and renames it, so a crash never leaves a
half-written model; temporary files left by an interrupted save are removed by the next save.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from defectscope.atomic import publish, temporary
from defectscope.engine.operating import (
    check_fit_info,
    check_threshold_source,
    checked_threshold,
)
from defectscope.errors import ConfigError, DefectscopeError, ModelFileError, unknown_name

FORMAT = "defectscope-model"
#: 3: checksums required, the threshold recorded twice (value and its source)
FORMAT_VERSION = 3
SUFFIX = ".safetensors"


def model_path(path: str | Path) -> Path:
    """``path`` itself if it ends in ``.safetensors``, else ``path/model.safetensors``."""
    path = Path(path)
    return path if path.suffix == SUFFIX else path / f"model{SUFFIX}"


def tensors_digest(tensors: dict[str, Any]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (numpy arrays or tensors:
    the same digest for the same data), in name order."""
    import numpy as np

    digest = hashlib.sha256()
    for name in sorted(tensors):
        array = np.asarray(_as_array(tensors[name]), order="C")  # keeps 0-d arrays 0-d
        # dtypes are named as PyTorch names them (files written before numpy arrays were saved)
        digest.update(f"{name}|torch.{array.dtype.name}|{tuple(array.shape)}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _as_array(tensor: Any):
    """A numpy view of a numpy array or a CPU tensor."""
    return tensor if not hasattr(tensor, "detach") else tensor.detach().contiguous().numpy()


def keep_previous(path: str | Path) -> Path | None:
    """Copy an existing model file to ``<stem>.previous.safetensors`` beside it (replacing an
    older copy), before it is overwritten; returns the copy, or None if there was no file."""
    import shutil

    path = Path(path)
    if not path.is_file():
        return None
    kept = path.with_name(f"{path.stem}.previous{path.suffix}")
    tmp = temporary(kept)
    try:
        shutil.copyfile(path, tmp)
        publish(tmp, kept)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return kept


def save_detector(detector: Any, path: str | Path) -> Path:
    """Write a fitted estimator atomically; returns the file written."""
    from safetensors.numpy import save_file

    from defectscope import __version__

    detector.check_fitted()
    path = model_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config, engine = detector.config_, detector.options()[1]
    import numpy as np

    state = detector.module_.fitted_state()
    tensors = {k: np.asarray(_as_array(v), order="C") for k, v in state.items()}
    header = {
        "detector": detector.name,
        "config": config.to_dict(),
        "engine": {k: v for k, v in engine.to_dict().items() if k != "progress"},
        "fitted": {"threshold": detector.threshold_, **detector.fit_info_},
    }
    text = json.dumps(header)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "defectscope_version": __version__,
        "tensors_sha256": tensors_digest(tensors),
        "config": text,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    tmp = temporary(path)
    try:
        save_file(tensors, tmp, metadata=metadata)
        publish(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a saved model (and its file metadata), without loading tensors."""
    from safetensors import safe_open

    path = model_path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}; train one with `defectscope fit`")
    try:
        with safe_open(str(path), framework="numpy") as handle:
            metadata = handle.metadata() or {}
    except PermissionError as exc:
        raise ModelFileError(f"model file {path} cannot be read: permission denied") from exc
    except Exception as exc:  # noqa: BLE001 - every reader failure means a damaged file
        raise ModelFileError(
            f"{path} is not a readable model file ({exc}); it may be truncated or corrupted: "
            "re-run `defectscope fit`"
        ) from exc
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path} is a safetensors file but not a defectscope model")
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        newer = version is not None and version.isdigit() and int(version) > FORMAT_VERSION
        raise ModelFileError(
            f"{path} has model format version {version} (written by defectscope "
            f"{metadata.get('defectscope_version')}); this defectscope reads version "
            f"{FORMAT_VERSION}: "
            + ("upgrade defectscope to read it" if newer else "re-fit the model with this version")
        )
    expected = metadata.get("config_sha256")
    if expected is None or "tensors_sha256" not in metadata:
        raise ModelFileError(
            f"{path}: its header has no checksum (config_sha256 and tensors_sha256 are "
            "required: the file was edited, or written by defectscope 0.2.0); re-run "
            "`defectscope fit`"
        )
    if expected != hashlib.sha256(metadata.get("config", "").encode()).hexdigest():
        raise ModelFileError(
            f"{path}: its header does not match the checksum stored with it (the file was "
            "edited or damaged after it was saved); re-run `defectscope fit`"
        )
    try:
        header = json.loads(metadata["config"])
        if not isinstance(header, dict):
            raise TypeError("the header is not a JSON object")
        for key, kind in (("detector", str), ("config", dict), ("engine", dict), ("fitted", dict)):
            if not isinstance(header.get(key), kind):
                raise TypeError(f"{key!r} missing or not a {kind.__name__}")
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path} has a damaged header ({exc}); re-run `defectscope fit`"
        ) from exc
    header["_metadata"] = metadata
    return header


def load(
    path: str | Path,
    *,
    runtime: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    weights: str | None = None,
):
    """Load a model saved with ``save``, or an exported ``.onnx`` file.

    Args:
        path: the ``.safetensors`` file, a run folder holding ``model.safetensors``, or an
            ``.onnx`` file written by ``defectscope export``.
        runtime, batch_size, num_workers, progress: how to run it (None: as saved).
        weights: where the backbone weights file now lives, if it moved (checked by SHA-256).

    These are the only options that can change on load: none changes what the model computes.
    """
    given = {
        "runtime": runtime,
        "batch_size": batch_size,
        "num_workers": num_workers,
        "progress": progress,
        "weights": weights,
    }
    overrides = {k: v for k, v in given.items() if v is not None}
    if Path(path).suffix == ".onnx":
        from defectscope.engine.exported import ExportedModel

        return ExportedModel(path, **{k: v for k, v in overrides.items() if k != "runtime"})
    import numpy as np
    from safetensors.numpy import load_file

    from defectscope.engine.estimator import ESTIMATORS
    from defectscope.engine.settings import EngineOptions

    file = model_path(path)
    header = read_header(file)
    name = header["detector"]
    if name not in ESTIMATORS:
        raise ModelFileError(f"{file}: " + unknown_name("detector", str(name), ESTIMATORS))
    cls = ESTIMATORS[name]
    try:
        config = cls.info.config.from_dict(header["config"], where=f"{file}: ")
        engine = EngineOptions.from_dict(header["engine"], where=f"{file}: ")
        threshold = checked_threshold(header["fitted"]["threshold"])
        check_threshold_source(header["fitted"].get("threshold_source"), threshold)
        check_fit_info(header["fitted"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(
            f"{file} has an invalid config ({exc}); a newer defectscope may have written it, or "
            "it was edited: re-run `defectscope fit`"
        ) from exc
    params = {**config.to_dict(), **engine.to_dict(), **overrides}
    detector = cls(**params)
    config, engine = detector.options()  # with the overrides (e.g. a moved weights file)
    try:
        tensors = load_file(str(file))
    except Exception as exc:  # noqa: BLE001 - every reader failure means a damaged file
        raise ModelFileError(
            f"{file} has damaged tensors ({exc}); re-run `defectscope fit`"
        ) from exc
    expected = header["_metadata"].get("tensors_sha256")
    if expected != tensors_digest(tensors):
        raise ModelFileError(
            f"{file}: the tensor data does not match the checksum in its header (the file was "
            "changed or damaged after it was saved); re-run `defectscope fit`"
        )
    for key, tensor in tensors.items():
        if tensor.dtype.kind == "f" and not np.isfinite(tensor).all():
            raise ModelFileError(f"{file}: tensor {key} holds NaN or infinite values; re-fit")
    fitted = {k: v for k, v in header["fitted"].items() if k != "threshold"}
    try:
        module = _restore(detector, config, engine, tensors, fitted)
    except DefectscopeError:
        raise
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ModelFileError(
            f"{file} has tensors that do not fit its config ({exc}); re-run `defectscope fit`"
        ) from exc
    detector._end_stage()
    detector._set_fitted(module, threshold, config, engine, fitted)
    detector.model_file_ = file
    return detector


def _restore(detector, config, engine, tensors: dict[str, Any], fitted: dict[str, Any]):
    """The scoring module of a model file's tensors: torch-free where the lean path can run
    (:mod:`defectscope.engine.lean`), else the detector's PyTorch module."""
    from defectscope.engine.lean import lean_module

    on_stage = detector._start_stages(engine)
    module = lean_module(detector.name, config, engine, tensors, fitted, on_stage)
    if module is not None:
        return module
    import warnings

    import torch

    from defectscope.engine.lean import lean_key

    with warnings.catch_warnings():
        # the arrays read from the file are read-only; the modules never write to these tensors
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        as_tensors = {k: torch.from_numpy(v) for k, v in tensors.items()}
    module = detector.info.load().restore(config, as_tensors, fitted, detector._hooks(engine))
    if lean_key(detector.name, config, engine) is not None:
        # restoring exported the graph the lean path needs: score as every later load will
        lean = lean_module(detector.name, config, engine, tensors, fitted, on_stage)
        if lean is not None:
            return lean
    return module
