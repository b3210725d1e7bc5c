"""The small training loop shared by the trained baselines: augmentation, early stopping,
loss history, progress with epoch, loss and ETA."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.data.loader import ImageInput, iter_batches
from defectscope.errors import ConfigError, unknown_name
from defectscope.models.base import Detector
from defectscope.progress import progress_bar

AUGMENTATIONS = ("hflip", "vflip", "rotate")
MAX_ROTATION_DEG = 10.0

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


def check_augment(augment: Sequence[str]) -> None:
    for name in augment:
        if name not in AUGMENTATIONS:
            raise ConfigError(unknown_name("augmentation", name, AUGMENTATIONS))


def load_all(items: Sequence[ImageInput], size: int, workers: int) -> torch.Tensor:
    """Every image as one ``(N, 3, S, S)`` float tensor in 0..1 (the baselines train on a few
    hundred small images, which fit in memory many times over)."""
    return torch.cat([batch for _, batch in iter_batches(items, size, 64, workers)])


def augment_batch(x: torch.Tensor, augment: Sequence[str], gen: torch.Generator) -> torch.Tensor:
    """Random flips and small rotations (at most ``MAX_ROTATION_DEG``), per image."""
    n = x.shape[0]
    if "hflip" in augment:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if "vflip" in augment:
        flip = torch.rand(n, generator=gen) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-2), x)
    if "rotate" in augment:
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(MAX_ROTATION_DEG)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack(
            [
                torch.stack([cos, -sin, torch.zeros(n)], 1),
                torch.stack([sin, cos, torch.zeros(n)], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    return x


def train(
    net: nn.Module,
    loss_fn: LossFn,
    x_train: torch.Tensor,
    y_train: torch.Tensor | None,
    x_val: torch.Tensor,
    y_val: torch.Tensor | None,
    *,
    epochs: int,
    patience: int,
    lr: float,
    batch_size: int,
    augment: Sequence[str],
    seed: int,
    progress: bool,
) -> dict[str, list[float]]:
    """Adam on ``loss_fn(net, x, y)``; keeps the weights of the best validation epoch.

    Returns the per-epoch history ``{"train": [...], "val": [...]}``.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history: dict[str, list[float]] = {"train": [], "val": []}
    best, best_state, waited = math.inf, None, 0
    with progress_bar(epochs, "training", enabled=progress, unit="epoch") as bar:
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(x_train), generator=gen)
            total = 0.0
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                x = augment_batch(x_train[idx], augment, gen)
                y = None if y_train is None else y_train[idx]
                loss = loss_fn(net, x, y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(idx)
            net.eval()
            with torch.no_grad():
                val = float(loss_fn(net, x_val, y_val))
            history["train"].append(total / len(order))
            history["val"].append(val)
            bar.set_postfix(train=f"{history['train'][-1]:.4f}", val=f"{val:.4f}")
            bar.update(1)
            if val < best - 1e-6:
                best, waited = val, 0
                best_state = {k: v.clone() for k, v in net.state_dict().items()}
            else:
                waited += 1
                if waited >= patience:
                    break
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return history


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train_idx, holdout_idx)``: a seeded random ``fraction`` (at least 1) held out."""
    order = np.random.default_rng(seed).permutation(n)
    k = min(n - 2, max(1, round(fraction * n)))
    return np.sort(order[k:]), np.sort(order[:k])


class NetDetector(Detector):
    """A detector whose learned state is one trained network plus a threshold (the baselines).

    Subclasses build their network in :meth:`_new_net` and train it with :meth:`_train`;
    saving and loading the network and its loss history is shared here.
    """

    fitted_attributes: ClassVar[tuple[str, ...]] = ("net_", "threshold_")

    epochs: int
    patience: int
    lr: float
    augment: Sequence[str]
    seed: int

    @abstractmethod
    def _new_net(self) -> nn.Module:
        """A freshly initialised network of this detector's configuration."""

    def _train(
        self,
        loss_fn: LossFn,
        x_train: torch.Tensor,
        y_train: torch.Tensor | None,
        x_val: torch.Tensor,
        y_val: torch.Tensor | None,
    ) -> None:
        """Build ``net_`` and train it with this detector's settings; sets ``history_``."""
        self.net_ = self._new_net()
        self.history_ = train(
            self.net_,
            loss_fn,
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=self.epochs,
            patience=self.patience,
            lr=self.lr,
            batch_size=self.batch_size,
            augment=self.augment,
            seed=self.seed,
            progress=self.progress,
        )

    def fitted_info(self) -> dict[str, Any]:
        return {"threshold_": self.threshold_, "history_": self.history_}

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net_.state_dict().items()}

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any]) -> None:
        self.net_ = self._new_net()
        self.net_.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("net.")})
        self.net_.eval()
        self.threshold_ = float(fitted["threshold_"])
        self.history_ = fitted.get("history_", {})
