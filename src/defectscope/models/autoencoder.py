"""A convolutional autoencoder scored by reconstruction error (a baseline of the original study)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from defectscope.errors import ConfigError
from defectscope.models.training import NetDetector, check_augment, load_all, split_holdout
from defectscope.ops import gaussian_blur


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def _up(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())


class ConvAutoencoder(nn.Module):
    """Four stride-2 convolutions down to ``S/16``, a ``latent``-channel bottleneck, and back."""

    def __init__(self, latent: int = 64, width: int = 32) -> None:
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            _block(3, w),
            _block(w, 2 * w),
            _block(2 * w, 4 * w),
            _block(4 * w, 4 * w),
            nn.Conv2d(4 * w, latent, 1),
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(latent, 4 * w, 1),
            nn.ReLU(),
            _up(4 * w, 4 * w),
            _up(4 * w, 2 * w),
            _up(2 * w, w),
            nn.ConvTranspose2d(w, 3, 4, 2, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _reconstruction_loss(net: nn.Module, x: torch.Tensor, _: torch.Tensor | None) -> torch.Tensor:
    return F.mse_loss(net(x), x)


class Autoencoder(NetDetector):
    """Convolutional autoencoder trained on defect-free images; anomaly = reconstruction error.

    The pixel map is the squared error averaged over colour channels and smoothed (``sigma``);
    the image score is the mean of its top ``top_fraction`` pixels, which is robust to single
    noisy pixels yet still sees a small defect. A held-out ``holdout`` slice of the good images
    drives early stopping and sets the pass/fail threshold (``threshold_quantile`` of its scores).

    Args:
        image_size: square input side (default 128: the network is trained on a CPU).
        latent: bottleneck channels; fewer reconstruct less detail, and less of the defects.
        epochs: maximum training epochs; ``patience`` epochs without a better validation loss
            stop training early.
        augment: any of ``hflip``, ``vflip``, ``rotate`` (at most 10 degrees); choose only
            what the category allows (e.g. no flips for parts with a handedness).
    """

    name: ClassVar[str] = "autoencoder"

    def __init__(
        self,
        *,
        image_size: int = 128,
        latent: int = 64,
        width: int = 32,
        epochs: int = 40,
        patience: int = 6,
        lr: float = 2e-3,
        augment: tuple[str, ...] | list[str] = ("hflip",),
        sigma: float = 2.0,
        top_fraction: float = 0.01,
        holdout: float = 0.15,
        threshold_quantile: float = 0.99,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 2,
        progress: bool = False,
    ) -> None:
        self.image_size = image_size
        self.latent = latent
        self.width = width
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.augment = augment
        self.sigma = sigma
        self.top_fraction = top_fraction
        self.holdout = holdout
        self.threshold_quantile = threshold_quantile
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress

    def _validate(self) -> None:
        super()._validate()
        self._check_threshold_quantile()
        check_augment(self.augment)
        if self.image_size % 16:
            raise ConfigError(f"image_size must be a multiple of 16, got {self.image_size}")
        if not 0 < self.top_fraction <= 1:
            raise ConfigError(f"top_fraction must be in (0, 1], got {self.top_fraction}")

    def _fit(self, paths: list[Path]) -> None:
        torch.manual_seed(self.seed)
        images = load_all(paths, self.image_size, self.num_workers)
        train_idx, val_idx = split_holdout(len(images), self.holdout, self.seed)
        self._train(_reconstruction_loss, images[train_idx], None, images[val_idx], None)
        with torch.no_grad():
            held = self.image_scores(self._error_maps(images[val_idx]))
        self.threshold_ = self._threshold(held.numpy())

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return self._error_maps(images)

    def _error_maps(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            error = (self.net_(images) - images).pow(2).mean(dim=1)
        return gaussian_blur(error, self.sigma)

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(1)
        k = max(1, int(self.top_fraction * flat.shape[1]))
        return flat.topk(k, dim=1).values.mean(dim=1)

    def _new_net(self) -> nn.Module:
        return ConvAutoencoder(self.latent, self.width)
