"""Model files: one ``.safetensors`` file holding the tensors and a JSON header, never pickle.

The header holds the detector's name and config, the engine options, what ``fit`` learned as
scalars (threshold, counts, the weights used), the file format version, the defectscope version
and a SHA-256 of the tensor data. Everything is checked on load: the config by its dataclass,
the tensors by the detector's ``restore`` (dtype, shape, index range), every value finite, and
the digests of the tensor data and of the header; any failure is a :class:`ModelFileError`
naming the file and what is wrong.

Saving writes a temporary file next to the target and renames it, so a crash never leaves a
half-written model; temporary files left by an interrupted save are removed by the next save.
This module only reads and writes; a detector restores itself from what it read
(:meth:`~defectscope.engine.fitting.estimator.Detector.from_saved`), and
:func:`defectscope.engine.workflows.loading.load` puts the two together.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from defectscope.atomic import replacing
from defectscope.errors import ModelFileError

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
    with replacing(kept) as tmp:
        shutil.copyfile(path, tmp)
    return kept


def save_detector(detector: Any, path: str | Path) -> Path:
    """Write a fitted estimator atomically; returns the file written."""
    detector.check_fitted()
    return write_model(path, model_header(detector), detector.saved_state())


def model_header(detector: Any) -> dict[str, Any]:
    """The JSON header of a fitted estimator's file: its detector, config, engine options and
    fit record (one member of an ensemble's file has the same)."""
    config, engine = detector.config_, detector.options()[1]
    return {
        "detector": detector.name,
        "config": config.to_dict(),
        "engine": {k: v for k, v in engine.to_dict().items() if k != "progress"},
        "fitted": {"threshold": detector.threshold_, **detector.fit_info_.to_dict()},
    }


def write_model(path: str | Path, header: dict[str, Any], state: dict[str, Any]) -> Path:
    """Write ``header`` and the tensors ``state`` to one model file, atomically, with the
    checksums :func:`read_header` and :func:`read_tensors` check; returns the file."""
    import numpy as np
    from safetensors.numpy import save_file

    from defectscope.version import __version__

    path = model_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: np.asarray(_as_array(v), order="C") for k, v in state.items()}
    text = json.dumps(header)
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "defectscope_version": __version__,
        "tensors_sha256": tensors_digest(tensors),
        "config": text,
        "config_sha256": hashlib.sha256(text.encode()).hexdigest(),
    }
    with replacing(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
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


def read_tensors(file: Path, header: dict[str, Any]) -> dict[str, Any]:
    """The tensors of a model file (numpy), checked against the digest in its header and for
    non-finite values."""
    import numpy as np
    from safetensors.numpy import load_file

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
    return tensors
