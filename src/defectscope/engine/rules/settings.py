"""The engine's own options: how it fits and scores, whatever the detector (torch-free and
detector-free: an exported model's loader checks its options here without the registry)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from defectscope.config import Options, option
from defectscope.engine.rules.operating import RULES, USED_PRECISIONS

RUNTIMES = ("auto", "torch", "onnxruntime")
#: the feature extractor's arithmetic (:mod:`defectscope.engine.runtimes.precision`)
PRECISIONS = (*USED_PRECISIONS, "auto")


@dataclass(frozen=True)
class EngineOptions(Options):
    """How the engine fits and scores, whatever the detector."""

    scope: ClassVar[str] = "engine"

    threshold_folds: int = option(
        5,
        "folds of the training images: each image is scored by a model fitted on the other "
        "folds (PaDiM, PatchCore), and those out-of-fold scores set the threshold",
    )
    synthetic: int = option(
        200, "synthetic defects made from the training images to choose the threshold (0: none)"
    )
    threshold_rule: str = option(
        "budget",
        "how the threshold is chosen from the out-of-fold scores: budget (reject at most "
        "max_false_reject of the good ones, catch the most), synthetic (best F1 of synthetic "
        "defects against them within that budget) or quantile (threshold_quantile of them)",
        choices=RULES,
    )
    max_false_reject: float = option(
        0.1, "the false-reject budget: largest fraction of out-of-fold good images rejected"
    )
    holdout: float = option(
        0.1,
        "fraction of the training images held out to choose the threshold (at most 32), for "
        "detectors without folds",
    )
    threshold_quantile: float = option(
        0.95, "quantile of the good images' scores used as threshold by the quantile rule"
    )
    runtime: str = option("auto", "where the feature extractor runs", choices=RUNTIMES)
    precision: str = option(
        "fp32",
        "the feature extractor's arithmetic after the fit's statistics are built: int8 (ONNX "
        "Runtime, calibrated on the training images; needs VNNI or AMX), bf16 (OpenVINO, "
        "installed apart; needs AMX or AVX-512 BF16), or auto (the fastest of them whose "
        "out-of-fold scores agree with fp32, else fp32); the torch-free path only",
        choices=PRECISIONS,
    )
    batch_size: int = option(32, "images per scoring batch")
    num_workers: int = option(2, "image decoding threads (and, in predict, overlay drawing)")
    progress: bool = option(False, "show progress bars")

    #: at most this many held-out images (their scores are all that is kept of them)
    max_holdout: ClassVar[int] = 32

    def validate(self) -> None:
        self.require(
            0 < self.holdout < 0.5, "holdout", "in (0, 0.5): without held-out images no threshold"
        )
        self.require(self.threshold_folds >= 2, "threshold_folds", "an int >= 2")
        self.require(0 <= self.synthetic <= 100_000, "synthetic", "an int in [0, 100000]")
        self.require(0 <= self.max_false_reject < 1, "max_false_reject", "in [0, 1)")
        self.require(0.5 <= self.threshold_quantile <= 1.0, "threshold_quantile", "in [0.5, 1]")
        self.require(self.batch_size >= 1, "batch_size", "a positive int")
        self.require(self.num_workers >= 0, "num_workers", ">= 0")


ENGINE_NAMES = EngineOptions.names()
