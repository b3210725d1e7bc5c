"""The autoencoder baseline's options (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from defectscope.config import option
from defectscope.models.common import TrainingOptions


@dataclass(frozen=True)
class AutoencoderConfig(TrainingOptions):
    """Convolutional autoencoder trained on defect-free images; anomaly = reconstruction error."""

    scope: ClassVar[str] = "autoencoder"

    latent: int = option(64, "bottleneck channels; fewer reconstruct less detail (and defect)")
    width: int = option(32, "channels of the first convolution (doubled twice)")
    sigma: float = option(2.0, "standard deviation of the error map's smoothing, in pixels")
    top_fraction: float = option(0.01, "image score = mean of this top fraction of the map")

    def validate(self) -> None:
        super().validate()
        self.require(self.image_size % 16 == 0, "image_size", "a multiple of 16")
        self.require(0 < self.top_fraction <= 1, "top_fraction", "in (0, 1]")
        self.require(self.latent >= 1 and self.width >= 1, "latent", ">= 1 (and width >= 1)")
        self.require(self.sigma >= 0, "sigma", ">= 0")
