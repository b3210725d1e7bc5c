"""A convolutional autoencoder scored by reconstruction error (a baseline of the original study).

The pixel map is the squared error averaged over colour channels and smoothed (``sigma``); the
image score is the mean of its top ``top_fraction`` pixels, which is robust to single noisy
pixels yet still sees a small defect.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from defectscope.models.autoencoder.config import AutoencoderConfig
from defectscope.models.base import AnomalyModule, Hooks
from defectscope.models.training import NetFitter, load_net_state, split_holdout
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


class AutoencoderModel(AnomalyModule):
    """Images -> smoothed squared reconstruction error; score = mean of the top pixels."""

    def __init__(self, net: ConvAutoencoder, config: AutoencoderConfig, info: dict[str, Any]):
        super().__init__()
        self.net = net.eval()
        self.sigma = config.sigma
        self.top_k = max(1, int(config.top_fraction * config.image_size**2))
        self.info = info

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        error = (self.net(images) - images).pow(2).mean(dim=1)
        maps = gaussian_blur(error, self.sigma)
        scores = maps.flatten(1).topk(self.top_k, dim=1).values.mean(dim=1)
        return scores, maps

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def fit_info(self) -> dict[str, Any]:
        return dict(self.info)


class AutoencoderFitter(NetFitter):
    config: AutoencoderConfig

    def finalize(self) -> AutoencoderModel:
        train_idx, val_idx = split_holdout(self.count, self.config.validation, self.config.seed)
        torch.manual_seed(self.config.seed)
        net = ConvAutoencoder(self.config.latent, self.config.width)
        history = self.fit_net(net, _reconstruction_loss, train_idx, val_idx)
        return AutoencoderModel(net, self.config, {"history": history, "n_train": self.count})


def make_fitter(config: AutoencoderConfig, hooks: Hooks) -> AutoencoderFitter:
    return AutoencoderFitter(config, hooks)


def restore(
    config: AutoencoderConfig, tensors: dict[str, torch.Tensor], info: dict[str, Any], hooks: Hooks
) -> AutoencoderModel:
    net = load_net_state(ConvAutoencoder(config.latent, config.width), tensors)
    return AutoencoderModel(net, config, info).eval()
