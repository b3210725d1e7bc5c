"""``load``: a saved model file (read by :mod:`~defectscope.engine.persistence.files`, restored by
its detector class) or an exported ``.onnx`` file
(:class:`~defectscope.engine.runtimes.exported.ExportedModel`)."""

from __future__ import annotations

from pathlib import Path

from defectscope.engine.fitting.ensemble import NAME as ENSEMBLE
from defectscope.engine.fitting.ensemble import Ensemble
from defectscope.engine.persistence.files import model_path, read_header, read_tensors
from defectscope.errors import ModelFileError, unknown_name


def load(
    path: str | Path,
    *,
    runtime: str | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool | None = None,
    weights: str | None = None,
):
    """Load a model saved with ``save`` (an ensemble's too), or an exported ``.onnx`` file.

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
        from defectscope.engine.runtimes.exported import ExportedModel

        return ExportedModel(path, **{k: v for k, v in overrides.items() if k != "runtime"})
    from defectscope.engine.fitting.estimator import ESTIMATORS  # the registry: not for .onnx files

    file = model_path(path)
    header = read_header(file)
    name = header["detector"]
    if name == ENSEMBLE:
        return Ensemble.from_saved(file, header, lambda: read_tensors(file, header), overrides)
    if name not in ESTIMATORS:
        raise ModelFileError(f"{file}: " + unknown_name("detector", str(name), ESTIMATORS))
    cls = ESTIMATORS[name]
    return cls.from_saved(file, header, lambda: read_tensors(file, header), overrides)
