"""Detectors: each is a config (``<name>/config.py``, torch-free), a scoring module and a fitter
(``<name>/model.py``). The registry below finds them by name without importing torch.

An implementation module provides ``make_fitter(config, hooks) -> Fitter`` and
``restore(config, tensors, info, hooks) -> AnomalyModule`` (see :mod:`defectscope.models.base`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from defectscope.config import Options
from defectscope.errors import ConfigError, unknown_name
from defectscope.models.autoencoder import AutoencoderConfig
from defectscope.models.classifier import ClassifierConfig
from defectscope.models.padim import PadimConfig
from defectscope.models.patchcore import PatchcoreConfig


@dataclass(frozen=True)
class DetectorInfo:
    """A registered detector.

    Attributes:
        name: what users type (``--model padim``).
        class_name: the Python API's estimator class (``defectscope.PaDiM``).
        config: its option dataclass.
        implementation: module path of ``make_fitter`` and ``restore``.
        supervised: trained on labelled good and defective images (``fit(images, labels)``).
        shardable: its training images may be split across shards (``fit(..., shards=N)``);
            its fitter implements ``partial`` and ``combine``.
        summary: one line for help texts.
        lean: module path of its torch-free path, or None: a module with ``lean_key``,
            ``lean_fitter`` and ``lean_restore`` (the :class:`~defectscope.models.lean.LeanPath`
            protocol); the engine finds it here and names no detector.
    """

    name: str
    class_name: str
    config: type[Options]
    implementation: str
    supervised: bool = False
    shardable: bool = False
    summary: str = ""
    lean: str | None = None

    def load(self) -> ModuleType:
        """The implementation module (imports torch)."""
        return importlib.import_module(self.implementation)

    def load_lean(self) -> ModuleType | None:
        """The torch-free implementation module (:class:`~defectscope.models.lean.LeanPath`),
        or None for a detector without one."""
        return importlib.import_module(self.lean) if self.lean else None


DETECTORS: dict[str, DetectorInfo] = {
    info.name: info
    for info in (
        DetectorInfo(
            "padim",
            "PaDiM",
            PadimConfig,
            "defectscope.models.padim.model",
            shardable=True,
            lean="defectscope.models.padim.lean",
            summary="Gaussian per patch position over CNN features (fast, streaming)",
        ),
        DetectorInfo(
            "patchcore",
            "PatchCore",
            PatchcoreConfig,
            "defectscope.models.patchcore.model",
            shardable=True,
            lean="defectscope.models.patchcore.lean",
            summary="nearest-neighbour distance to a coreset memory bank (most accurate)",
        ),
        DetectorInfo(
            "autoencoder",
            "Autoencoder",
            AutoencoderConfig,
            "defectscope.models.autoencoder.model",
            summary="convolutional autoencoder, reconstruction error (baseline)",
        ),
        DetectorInfo(
            "classifier",
            "Classifier",
            ClassifierConfig,
            "defectscope.models.classifier.model",
            supervised=True,
            summary="supervised good/defective CNN, needs labelled defects (baseline)",
        ),
    )
}


def detector_info(name: str) -> DetectorInfo:
    """The registered detector ``name``; unknown names raise with close matches."""
    if name not in DETECTORS:
        raise ConfigError(unknown_name("model", name, DETECTORS))
    return DETECTORS[name]


__all__ = ["DETECTORS", "DetectorInfo", "detector_info"]
