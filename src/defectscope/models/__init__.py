"""Detectors, all on :class:`~defectscope.models.base.Detector`."""

from defectscope.models.autoencoder import Autoencoder
from defectscope.models.base import Detector, Prediction, ScoredImages
from defectscope.models.classifier import Classifier
from defectscope.models.padim import PaDiM

DETECTORS: dict[str, type[Detector]] = {cls.name: cls for cls in (PaDiM, Autoencoder, Classifier)}

__all__ = [
    "DETECTORS",
    "Autoencoder",
    "Classifier",
    "Detector",
    "PaDiM",
    "Prediction",
    "ScoredImages",
]
