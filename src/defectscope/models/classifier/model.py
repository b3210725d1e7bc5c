"""A small supervised CNN classifier, good vs defective (a baseline of the original study).

Unlike the other detectors it needs **labelled defective images** to train. MVTec AD has none
in its training split, so the engine evaluates it by stratified k-fold cross-validation over the
test split: every image is scored by a model that never saw it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.data.splits import stratified_folds
from defectscope.models.base import AnomalyModule, Hooks
from defectscope.models.classifier.config import ClassifierConfig
from defectscope.models.training import NetFitter, load_net_state


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool stages, global max pooling, one logit.

    Max rather than average pooling: a defect covers a few percent of the image, and an
    average over the whole image dilutes it below what the head can separate.
    """

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i in range(4):
            cout = width * 2**i
            layers += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(cin, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).amax(dim=(2, 3))).squeeze(1)


def _bce(net: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(net(x), y)


class ClassifierModel(AnomalyModule):
    """Images -> probability of 'defective'; no localisation: the map is the score everywhere."""

    def __init__(self, net: SmallCNN, info: dict[str, Any]) -> None:
        super().__init__()
        self.net = net.eval()
        self.info = info

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        prob = torch.sigmoid(self.net(images))
        maps = prob.view(-1, 1, 1).expand(-1, images.shape[-2], images.shape[-1])
        return prob, maps.contiguous()

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def fit_info(self) -> dict[str, Any]:
        return dict(self.info)


class ClassifierFitter(NetFitter):
    supervised = True
    config: ClassifierConfig

    def finalize(self) -> ClassifierModel:
        y = torch.cat(self.labels).numpy().astype(bool)
        if len(y) != self.count or y.all() or not y.any():
            raise ValueError(
                f"the classifier needs one label per image and both classes; got {self.count} "
                f"images, {int(y.sum())} defective, {int((~y).sum())} good"
            )
        # a stratified validation slice for early stopping
        folds = stratified_folds(y, max(2, round(1 / self.config.validation)), self.config.seed)
        val = folds[0]
        tr = np.setdiff1d(np.arange(len(y)), val)
        torch.manual_seed(self.config.seed)
        net = SmallCNN(self.config.width)
        history = self.fit_net(net, _bce, tr, val)
        return ClassifierModel(net, {"history": history, "n_train": self.count})


def make_fitter(config: ClassifierConfig, hooks: Hooks) -> ClassifierFitter:
    return ClassifierFitter(config, hooks)


def restore(
    config: ClassifierConfig, tensors: dict[str, torch.Tensor], info: dict[str, Any], hooks: Hooks
) -> ClassifierModel:
    return ClassifierModel(load_net_state(SmallCNN(config.width), tensors), info).eval()
