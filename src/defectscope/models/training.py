"""The small training loop shared by the trained baselines: augmentation, early stopping and
loss history; progress is reported through :class:`~defectscope.models.base.Hooks`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.models.base import Fitter, Hooks
from defectscope.models.common import TrainingOptions

MAX_ROTATION_DEG = 10.0

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor | None], torch.Tensor]


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
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> dict[str, list[float]]:
    """Adam on ``loss_fn(net, x, y)``; keeps the weights of the best validation epoch.

    Returns the per-epoch history ``{"train": [...], "val": [...]}``.
    """
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    history: dict[str, list[float]] = {"train": [], "val": []}
    best, best_state, waited = math.inf, None, 0
    for epoch in range(epochs):
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
        if on_epoch is not None:
            on_epoch(epoch + 1, history["train"][-1], val)
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


class NetFitter(Fitter):
    """Collects the training images, then trains a network in :meth:`finalize`.

    The baselines train on a few hundred small images, which fit in memory many times over.
    """

    config: TrainingOptions

    def __init__(self, config: TrainingOptions, hooks: Hooks) -> None:
        self.config = config
        self.hooks = hooks
        self.images: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def update(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.images.append(images)
        if labels is not None:
            self.labels.append(labels)

    def fit_net(
        self, net: nn.Module, loss_fn: LossFn, train_idx, val_idx
    ) -> dict[str, list[float]]:
        """Train ``net`` on the collected images (and labels) with this fitter's options."""
        torch.manual_seed(self.config.seed)
        x = torch.cat(self.images)
        y = torch.cat(self.labels).float() if self.labels else None
        return train(
            net,
            loss_fn,
            x[train_idx],
            None if y is None else y[train_idx],
            x[val_idx],
            None if y is None else y[val_idx],
            epochs=self.config.epochs,
            patience=self.config.patience,
            lr=self.config.lr,
            batch_size=self.config.train_batch_size,
            augment=self.config.augment,
            seed=self.config.seed,
            on_epoch=self.hooks.on_epoch,
        )

    @property
    def count(self) -> int:
        return sum(len(x) for x in self.images)


def load_net_state(net: nn.Module, tensors: dict[str, torch.Tensor]) -> nn.Module:
    """``net`` with the ``net.*`` tensors of a model file; ValueError if they do not fit."""
    state = {k[4:]: v for k, v in tensors.items() if k.startswith("net.")}
    expected = net.state_dict()
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))[:2]
        raise ValueError(f"network tensors do not match the config (missing e.g. {missing})")
    for key, value in state.items():
        if value.shape != expected[key].shape or value.dtype != expected[key].dtype:
            raise ValueError(
                f"net.{key} must be {expected[key].dtype} {tuple(expected[key].shape)}, "
                f"got {value.dtype} {tuple(value.shape)}"
            )
    net.load_state_dict(state)
    return net.eval()
