"""What the lean (torch-free) detectors share: the patch embedding of uint8 images through a
cached ONNX graph, the illumination corrections in numpy, and the graph cache key.

When the feature extractor's ONNX graph is already cached, fitting and scoring need no network
in PyTorch: the engine runs the cached graph (``features``: float32 images ``(B, 3, H, W)`` ->
``(B, D, h, w)``) and the detectors' ``lean`` modules do the rest in numpy, with the same
tensors and model files as their PyTorch modules (the engine's tests check the two agree).
Only the illumination corrections without neighbourhoods (``none``, ``gain``, ``standardize``)
run here; ``local`` takes the PyTorch path.
"""

from __future__ import annotations

from collections.abc import Callable
from hashlib import sha256

import numpy as np

from defectscope.specs import IMAGENET_MEAN, IMAGENET_STD, weights_identity

#: part of every cached graph key: a change to what the embedding graph computes bumps it
GRAPH_VERSION = 2
#: the illumination modes done in numpy (``local`` needs PyTorch's pooling)
LEAN_ILLUMINATION = ("none", "gain", "standardize")
#: as ``models.features.Illumination.EPS``: keeps a black image from being divided by zero
EPS = 1.0 / 255.0

Features = Callable[[np.ndarray], np.ndarray]


def graph_key(tag: str, config, *extra) -> str | None:
    """The cache key of a detector's embedding graph from its config (backbone, layers, input
    shape, seed) and the SHA-256 of the weights file, with no network built; None where the
    weights are not a file (random, downloaded). ``extra``: what else the graph depends on."""
    identity = weights_identity(config.backbone, config.weights)
    if identity is None:
        return None
    layers = tuple(config.layers) if config.layers else None
    parts = (tag, GRAPH_VERSION, config.input_shape, config.backbone, layers, *extra, identity[0])
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


def gain_target(images: np.ndarray) -> float:
    """The mean intensity of uint8 ``images`` in 0..1: the gain target a fit takes from its
    first batch (as ``Illumination.calibrate``)."""
    return float(np.float32(to_float(images).mean()))
