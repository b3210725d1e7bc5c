"""PaDiM's options (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from defectscope.config import option
from defectscope.models.common import ILLUMINATION, BackboneOptions


@dataclass(frozen=True)
class PadimConfig(BackboneOptions):
    """Patch Distribution Modeling (Defard et al., 2020): a Gaussian per patch position."""

    scope: ClassVar[str] = "padim"

    n_features: int | None = option(
        None, "channels kept at random; None: the backbone's default, 0: all"
    )
    regularization: float = option(
        0.01, "added to every covariance diagonal: keeps it invertible with few images (paper)"
    )
    sigma: float = option(4.0, "standard deviation of the map's Gaussian smoothing, in pixels")
    illumination: str = option(
        "gain",
        "per-image lighting correction before the backbone: gain = scale every image to the "
        "training images' mean intensity; standardize = each channel to a fixed mean and spread; "
        "local = local contrast normalisation (15 px window) "
        "(gain: screw 0.551 -> 0.775, bottle and tire unchanged, see the study)",
        choices=ILLUMINATION,
    )

    def validate(self) -> None:
        super().validate()
        # below 1e-8 the float32 factor of a flat patch's covariance overflows; above 1e4 the
        # regularisation outweighs every feature's variance and the model sees nothing
        self.require(1e-8 <= self.regularization <= 1e4, "regularization", "in [1e-8, 1e4]")
        self.require(
            self.sigma == 0 or 0.05 <= self.sigma <= 1000,
            "sigma",
            "0 (no smoothing) or in [0.05, 1000] pixels",
        )
        self.require(self.n_features is None or self.n_features >= 0, "n_features", ">= 0")
