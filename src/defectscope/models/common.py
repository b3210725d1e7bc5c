"""Options shared by several detectors (torch-free, like every ``config.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from defectscope.backbones.specs import DEFAULT_BACKBONE
from defectscope.config import Options, option
from defectscope.errors import ConfigError, unknown_name

#: per-image illumination corrections, applied inside the scoring module (so also in export)
ILLUMINATION = ("none", "gain", "standardize", "local")
AUGMENTATIONS = ("hflip", "vflip", "rotate")


@dataclass(frozen=True)
class ImageOptions(Options):
    """Options of every detector."""

    image_size: int = option(256, "square input side in pixels")
    seed: int = option(0, "seed of every random choice (kept channels, coreset, held-out slice)")

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(height, width)`` of the images the model takes."""
        return (self.image_size, self.image_size)

    def validate(self) -> None:
        self.require(0 <= self.seed < 2**32, "seed", "an int in [0, 2**32) (numpy's seeds)")
        for name in ("image_size", "image_height"):
            value = getattr(self, name, None)
            if value is None:
                continue
            self.require(value >= 32, name, "an int >= 32")
            self.require(
                value <= 2048,
                name,
                "at most 2048 (larger inputs need more memory than a CPU inspection station has)",
            )


@dataclass(frozen=True)
class BackboneOptions(ImageOptions):
    """Options of the detectors built on a pretrained CNN."""

    image_size: int = option(256, "input side in pixels (the width where image_height is set)")
    backbone: str = option(
        DEFAULT_BACKBONE,
        "feature extractor: efficientnet_lite0/1/2, resnet18, wide_resnet50_2, timm:ARCH or "
        "torchvision:ARCH (with layers)",
    )
    layers: tuple[str, ...] | None = option(
        None, "feature layers (module names); None: the detector's default stages"
    )
    weights: str | None = option(
        None,
        "backbone weights file (.pth/.safetensors), 'random' (timing only), or None to "
        "find pretrained weights",
    )
    image_height: int | None = option(
        None,
        "input height in pixels when it differs from image_size, which is then the width: keeps "
        "a non-square camera's aspect ratio (e.g. image_size 288, image_height 384 for images 384 "
        "wide and 512 high); None: square inputs of image_size",
    )
    illumination: str = option(
        "none",
        "per-image lighting correction before the backbone: gain = scale every image to the "
        "training images' mean intensity; standardize = each channel to a fixed mean and spread; "
        "local = local contrast normalisation (15 px window)",
        choices=ILLUMINATION,
    )

    @property
    def input_shape(self) -> tuple[int, int]:
        """``(height, width)``: ``image_height`` (or ``image_size``) by ``image_size``."""
        return (self.image_height or self.image_size, self.image_size)


@dataclass(frozen=True)
class TrainingOptions(ImageOptions):
    """Options of the detectors that train a network (the baselines)."""

    image_size: int = option(128, "square input side in pixels (small: trained on a CPU)")
    epochs: int = option(40, "maximum training epochs")
    patience: int = option(6, "epochs without a better validation loss before stopping")
    lr: float = option(2e-3, "Adam learning rate")
    augment: tuple[str, ...] = option(
        ("hflip",),
        "training augmentations: any of hflip, vflip, rotate (at most 10 degrees); "
        "choose only what the category allows",
    )
    validation: float = option(0.15, "fraction of the training images used for early stopping")
    train_batch_size: int = option(16, "images per training step")

    def validate(self) -> None:
        super().validate()
        for name in self.augment:
            if name not in AUGMENTATIONS:
                raise ConfigError(unknown_name("augmentation", name, AUGMENTATIONS))
        self.require(self.epochs >= 1, "epochs", ">= 1")
        self.require(self.patience >= 1, "patience", ">= 1")
        self.require(self.lr > 0, "lr", "> 0")
        self.require(0 < self.validation < 0.5, "validation", "in (0, 0.5)")
        self.require(self.train_batch_size >= 1, "train_batch_size", ">= 1")
