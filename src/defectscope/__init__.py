"""defectscope: industrial visual anomaly detection and localisation, offline on a CPU.

The estimators (``PatchCore``, the default, ``PaDiM``, ``Autoencoder``, ``Classifier``: one per
registered detector) and ``load`` are imported on first use, so ``import defectscope`` stays
light (no torch until a model needs it).
"""

from __future__ import annotations

from typing import Any

from defectscope.version import __version__

_LAZY = {
    "load": ("defectscope.engine.workflows.loading", "load"),
    "evaluate": ("defectscope.engine.workflows.evaluation", "evaluate"),
    "auto_fit": ("defectscope.auto", "auto_fit"),
    "export_onnx": ("defectscope.engine.runtimes.exported", "export_onnx"),
    "ExportedModel": ("defectscope.engine.runtimes.exported", "ExportedModel"),
    "Detector": ("defectscope.engine.fitting.estimator", "Detector"),
    "Ensemble": ("defectscope.engine.fitting.ensemble", "Ensemble"),
    "Prediction": ("defectscope.results", "Prediction"),
    "DefectscopeError": ("defectscope.errors", "DefectscopeError"),
}


def _estimators() -> dict[str, str]:
    from defectscope.models import DETECTORS

    return {info.class_name: name for name, info in DETECTORS.items()}


def __getattr__(name: str) -> Any:
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    if not name[:1].isupper():  # submodules (`from defectscope import metrics`) land here
        raise AttributeError(f"module 'defectscope' has no attribute {name!r}")
    classes = _estimators()
    if name in classes:
        from defectscope.engine.fitting.estimator import ESTIMATORS

        return ESTIMATORS[classes[name]]
    raise AttributeError(f"module 'defectscope' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY, *_estimators()})


#: the estimators are the registry's (tests/test_contract.py checks this list against it)
__all__ = [*_LAZY, "Autoencoder", "Classifier", "PaDiM", "PatchCore", "__version__"]
