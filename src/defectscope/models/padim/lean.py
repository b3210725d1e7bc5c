"""PaDiM without PyTorch: the fitter and the scoring module of the lean path.

When the feature extractor's ONNX graph is already cached, fitting and scoring need no network
in PyTorch: the engine runs the cached graph (``features``: float32 images ``(B, 3, H, W)`` ->
kept channels ``(B, D, h, w)``) and these classes do the rest in numpy, with the same statistics
(:mod:`defectscope.ops.moments`), the same tensors and the same model file as
:class:`~defectscope.models.padim.model.PadimModel`. The engine checks the two agree.

Only the illumination corrections without neighbourhoods (``none``, ``gain``, ``standardize``)
run here; ``local`` takes the PyTorch path.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256
from typing import Any

import numpy as np

from defectscope.models.padim.config import PadimConfig
from defectscope.ops.moments import (
    GaussianAccumulator,
    mahalanobis,
    precision_cholesky_of,
    resize_blur_matrix,
    upsample_maps,
)
from defectscope.specs import IMAGENET_MEAN, IMAGENET_STD, weights_identity

#: part of every cached graph key: a change to what the embedding graph computes bumps it
GRAPH_VERSION = 2
#: the illumination modes done in numpy (``local`` needs PyTorch's pooling)
LEAN_ILLUMINATION = ("none", "gain", "standardize")
#: as ``models.features.Illumination.EPS``: keeps a black image from being divided by zero
EPS = 1.0 / 255.0

Features = Callable[[np.ndarray], np.ndarray]


def channel_subset(total: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """The random channels PaDiM keeps: ``n_features`` of ``total``, sorted, drawn from ``rng``
    (``np.random.default_rng(seed)`` gives a model's ``feature_index``)."""
    return np.sort(rng.choice(total, size=n_features, replace=False))


def embedding_key(config: PadimConfig) -> str | None:
    """The cache key of PaDiM's embedding graph, from the config and the SHA-256 of the weights
    file (no network built); None where the weights are not a file (random, downloaded)."""
    identity = weights_identity(config.backbone, config.weights)
    if identity is None:
        return None
    layers = tuple(config.layers) if config.layers else None
    parts = (
        "padim-embedding",
        GRAPH_VERSION,
        config.input_shape,
        config.backbone,
        layers,
        config.n_features,
        config.seed,
        identity[0],
    )
    return sha256(repr(parts).encode()).hexdigest()[:24]


def to_float(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in 0..1 (as the engine's tensors)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255)


def illuminate(images: np.ndarray, mode: str, target: float) -> np.ndarray:
    """:class:`~defectscope.models.features.Illumination` in numpy, for ``LEAN_ILLUMINATION``."""
    if mode == "gain":
        level = np.maximum(images.mean(axis=(1, 2, 3), keepdims=True), np.float32(EPS))
        return np.clip(images * (np.float32(target) / level), 0.0, 1.0)
    if mode == "standardize":
        mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
        std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(1, 3, 1, 1)
        mu = images.mean(axis=(2, 3), keepdims=True)
        sd = np.maximum(images.std(axis=(2, 3), keepdims=True, ddof=1), np.float32(EPS))
        return np.clip((images - mu) / sd * std + mean, 0.0, 1.0)
    if mode == "none":
        return images
    raise ValueError(f"illumination {mode!r} has no numpy version; use the PyTorch path")


class LeanEmbedding:
    """uint8 images -> ``(B, P, D)`` patch embeddings: illumination here, the network in
    ``features``."""

    def __init__(self, features: Features, mode: str, feature_size: tuple[int, int]) -> None:
        self.features = features
        self.mode = mode
        self.feature_size = feature_size

    def __call__(self, images: np.ndarray, target: float) -> np.ndarray:
        out = self.features(illuminate(to_float(images), self.mode, target))  # (B, D, h, w)
        batch, dim = out.shape[:2]
        return np.ascontiguousarray(out.reshape(batch, dim, -1).transpose(0, 2, 1))


class PadimLean:
    """uint8 images ``(B, H, W, 3)`` -> ``(scores (B,), maps (B, H, W))``: what
    :class:`~defectscope.models.padim.model.PadimModel` computes, with numpy."""

    #: takes uint8 images as numpy arrays (the engine feeds it without PyTorch)
    lean = True
    max_batch: int | None = None

    def __init__(
        self,
        embedding: LeanEmbedding,
        mean: np.ndarray,
        precision_chol: np.ndarray,
        feature_index: np.ndarray,
        target: float,
        config: PadimConfig,
        info: dict[str, Any],
    ) -> None:
        self.embedding = embedding
        self.mean = mean
        self.precision_chol = precision_chol
        self.feature_index = feature_index
        self.target = float(target)
        self.info = info
        (h, w), (height, width) = embedding.feature_size, config.input_shape
        self.rows = resize_blur_matrix(h, height, config.sigma)
        self.cols = resize_blur_matrix(w, width, config.sigma)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        patches = mahalanobis(self.embedding(images, self.target), self.mean, self.precision_chol)
        maps = upsample_maps(
            patches.reshape(len(images), *self.embedding.feature_size), self.rows, self.cols
        ).astype(np.float32, copy=False)
        return maps.reshape(len(images), -1).max(axis=1), maps

    def fitted_state(self) -> dict[str, np.ndarray]:
        """The model file's tensors, as :meth:`PadimModel.fitted_state` names them."""
        rows, cols = np.tril_indices(self.mean.shape[1])
        return {
            "mean": self.mean,
            "precision_chol_lower": np.ascontiguousarray(self.precision_chol[:, rows, cols]),
            "feature_index": self.feature_index,
            "illumination_target": np.asarray([self.target], dtype=np.float32),
        }

    def fit_info(self) -> dict[str, Any]:
        return dict(self.info)

    @classmethod
    def restore(
        cls,
        embedding: LeanEmbedding,
        feature_index: np.ndarray,
        config: PadimConfig,
        tensors: dict[str, np.ndarray],
        info: dict[str, Any],
    ) -> PadimLean:
        """From a model file's tensors; ValueError on a shape, dtype or selection mismatch (the
        graph keeps ``feature_index``: the file must have been fitted with the same)."""
        index = tensors["feature_index"]
        if index.dtype != np.int64 or not np.array_equal(index, feature_index):
            raise ValueError("feature_index differs from the cached graph's kept channels")
        positions, dim = embedding.feature_size[0] * embedding.feature_size[1], len(index)
        packed = dim * (dim + 1) // 2
        expected = {"mean": (positions, dim), "precision_chol_lower": (positions, packed)}
        for name, shape in expected.items():
            got = tensors[name]
            if got.shape != shape or got.dtype != np.float32:
                raise ValueError(f"{name} must be float32 {shape}, got {got.dtype} {got.shape}")
        target = tensors.get("illumination_target")
        if target is None or target.dtype != np.float32 or target.shape != (1,):
            raise ValueError("illumination_target must be a float32 tensor of shape (1,)")
        if not 0.0 < float(target[0]) <= 1.0:
            raise ValueError(f"illumination_target must be in (0, 1], got {float(target[0])}")
        factor = np.zeros((positions, dim, dim), dtype=np.float32)
        rows, cols = np.tril_indices(dim)
        factor[:, rows, cols] = tensors["precision_chol_lower"]
        return cls(embedding, tensors["mean"], factor, index, float(target[0]), config, info)


class PadimLeanFitter:
    """:class:`~defectscope.models.padim.model.PadimFitter` without PyTorch: uint8 batches in,
    a :class:`PadimLean` out."""

    lean = True
    supervised = False
    merge_holdout = True
    shardable = False

    def __init__(
        self,
        config: PadimConfig,
        embedding: LeanEmbedding,
        feature_index: np.ndarray,
        weights_source: str,
    ) -> None:
        self.config = config
        self.embedding = embedding
        self.feature_index = feature_index
        self.weights_source = weights_source
        h, w = embedding.feature_size
        self.accumulator = GaussianAccumulator(h * w, len(feature_index))
        self.target = float("nan")

    def update(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        if np.isnan(self.target):  # the first images seen set the gain target, as in PyTorch
            self.target = float(np.float32(to_float(images).mean()))
        self.accumulator.update(self.embedding(images, self.target))

    def finalize(self) -> PadimLean:
        acc, config = self.accumulator, self.config
        precision = precision_cholesky_of(acc, config.regularization)
        identity = weights_identity(config.backbone, config.weights)
        info = {
            "feature_size": list(self.embedding.feature_size),
            "n_train": acc.count,
            "weights_source": self.weights_source,
            # as the PyTorch fitter: the digest is recorded for a weights file given by path
            "weights_sha256": identity[0] if config.weights and identity else None,
        }
        mean = acc.mean.astype(np.float32)
        return PadimLean(
            self.embedding, mean, precision, self.feature_index, self.target, config, info
        )
