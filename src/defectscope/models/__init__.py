"""Detectors, all on :class:`~defectscope.models.base.Detector`."""

from defectscope.models.base import Detector, Prediction, ScoredImages
from defectscope.models.padim import PaDiM

DETECTORS: dict[str, type[Detector]] = {PaDiM.name: PaDiM}

__all__ = ["DETECTORS", "Detector", "PaDiM", "Prediction", "ScoredImages"]
