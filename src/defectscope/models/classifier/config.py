"""The supervised classifier baseline's options (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from defectscope.config import option
from defectscope.models.common import TrainingOptions


@dataclass(frozen=True)
class ClassifierConfig(TrainingOptions):
    """Small supervised CNN, good vs defective; score = probability of 'defective'."""

    scope: ClassVar[str] = "classifier"

    patience: int = option(15, "epochs without a better validation loss before stopping")
    width: int = option(16, "channels of the first convolution (doubled three times)")
    folds: int = option(5, "folds of the cross-validation that scores it in a benchmark")

    def validate(self) -> None:
        super().validate()
        self.require(self.width >= 1, "width", ">= 1")
        self.require(self.folds >= 2, "folds", ">= 2")
