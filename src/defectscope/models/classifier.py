"""A small supervised CNN classifier, good vs defective (a baseline of the original study).

Unlike the other detectors it needs **labelled defective images** to train. MVTec AD has none
in its training split, so it is evaluated by stratified k-fold cross-validation over the test
split (:func:`cross_validate`): every image is scored by a model that never saw it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.data.mvtec import Category
from defectscope.errors import ConfigError, DataError
from defectscope.models.training import NetDetector, check_augment, load_all


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


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index sets covering every sample, each with the class ratio of the whole."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for value in (False, True):
        idx = rng.permutation(np.flatnonzero(labels == value))
        for i, j in enumerate(idx):
            folds[i % k].append(int(j))
    return [np.sort(np.array(f, dtype=int)) for f in folds]


class Classifier(NetDetector):
    """Supervised good/defective CNN. Score = probability of 'defective'; threshold 0.5.

    It has no localisation: its anomaly map is the image score everywhere. Train it with
    ``fit(images, labels)``; ``fit`` on a category folder is refused, since a category's
    training split holds no defects.
    """

    name: ClassVar[str] = "classifier"

    def __init__(
        self,
        *,
        image_size: int = 128,
        width: int = 16,
        epochs: int = 40,
        patience: int = 15,
        lr: float = 2e-3,
        augment: tuple[str, ...] | list[str] = ("hflip",),
        holdout: float = 0.15,
        seed: int = 0,
        batch_size: int = 16,
        num_workers: int = 2,
        progress: bool = False,
    ) -> None:
        self.image_size = image_size
        self.width = width
        self.epochs = epochs
        self.patience = patience
        self.lr = lr
        self.augment = augment
        self.holdout = holdout
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress

    def fit(self, data: Sequence[str | Path], labels: Sequence[bool] | None = None) -> Classifier:
        """Train on images with labels (True = defective); returns ``self``."""
        if labels is None or isinstance(data, (str, Path, Category)):
            raise DataError(
                "the classifier is supervised: call fit(images, labels) with labelled good and "
                "defective images (a category's train/good holds no defects)"
            )
        self._validate()
        check_augment(self.augment)
        y = np.asarray(labels, dtype=bool)
        if len(y) != len(data) or y.all() or not y.any():
            raise DataError(
                f"classifier needs one label per image and both classes; got {len(data)} images, "
                f"{int(y.sum())} defective, {int((~y).sum())} good"
            )
        torch.manual_seed(self.seed)
        images = load_all(list(data), self.image_size, self.num_workers)
        # a stratified validation slice for early stopping
        folds = stratified_folds(y, max(2, round(1 / self.holdout)), self.seed)
        val = folds[0]
        tr = np.setdiff1d(np.arange(len(y)), val)
        target = torch.from_numpy(y).float()
        self._train(_bce, images[tr], target[tr], images[val], target[val])
        self.threshold_ = 0.5
        return self

    def _fit(self, paths: list[Path]) -> None:  # pragma: no cover - fit is overridden
        raise NotImplementedError

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        with torch.no_grad():
            prob = torch.sigmoid(self.net_(images))
        return prob.view(-1, 1, 1).expand(-1, images.shape[-2], images.shape[-1]).contiguous()

    def _new_net(self) -> nn.Module:
        return SmallCNN(self.width)


def cross_validate(
    make: Callable[[], Classifier], category: Category, folds: int = 5, seed: int = 0
):
    """Stratified k-fold over the test split: out-of-fold scores, metrics and accuracy.

    Returns a :class:`~defectscope.evaluation.CategoryResult` whose ``extra`` holds the folds,
    the accuracy and the per-fold loss histories.
    """
    from defectscope.evaluation import CategoryResult, ImageResult, compute_metrics

    samples = category.test_samples
    labels = np.array([s.is_anomalous for s in samples])
    if min(labels.sum(), (~labels).sum()) < folds:
        raise DataError(
            f"{category.name}: {folds}-fold cross-validation needs at least {folds} good and "
            f"{folds} defective test images; found {(~labels).sum()} and {labels.sum()}"
        )
    if folds < 2:
        raise ConfigError(f"folds must be >= 2, got {folds}")
    paths = [s.path for s in samples]
    scores = np.zeros(len(samples), dtype=np.float32)
    parts = stratified_folds(labels, folds, seed)
    histories = []
    start = time.perf_counter()
    for part in parts:
        train_idx = np.setdiff1d(np.arange(len(samples)), part)
        model = make().fit([paths[i] for i in train_idx], labels[train_idx])
        scores[part] = model.score([paths[i] for i in part]).scores
        histories.append(model.history_)
    seconds = time.perf_counter() - start
    accuracy = float(np.mean((scores > 0.5) == labels))
    images = [
        ImageResult(str(s.path), s.defect_type, bool(s.is_anomalous), float(x), bool(x > 0.5))
        for s, x in zip(samples, scores)
    ]
    computed = compute_metrics(labels, scores, 0.5)
    return CategoryResult(
        category=category.name,
        detector=Classifier.name,
        metrics=computed.values,
        threshold=0.5,
        images=images,
        curves=computed.curves,
        notices=[
            f"{category.name}: classifier scored by {folds}-fold cross-validation over the "
            "test split (supervised; no localisation)"
        ],
        fit_seconds=seconds,
        evaluate_seconds=0.0,
        n_train=int(len(samples) * (folds - 1) / folds),
        extra={"accuracy": accuracy, "folds": [p.tolist() for p in parts], "history": histories[0]},
    )
