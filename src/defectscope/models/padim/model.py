"""PaDiM's scoring module and fitter (Defard et al., 2020).

Features of the stride-4, -8 and -16 stages of an ImageNet CNN are concatenated per patch,
a seeded random subset of ``n_features`` channels is kept, and a Gaussian is fitted at every
patch position from defect-free images. A test patch scores its Mahalanobis distance; the map
is upsampled bilinearly to the input size and smoothed (``sigma``); the image score is its
maximum.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones.specs import check_weights_unchanged
from defectscope.errors import ConfigError
from defectscope.memory import release_free_memory
from defectscope.models.base import Fitter, Hooks, image_max
from defectscope.models.features import (
    Extractor,
    Illumination,
    PatchMapModule,
    SharedIllumination,
    build_extractor,
    restore_illumination,
)
from defectscope.models.padim.config import PadimConfig
from defectscope.models.padim.lean import FoldedStatistics, channel_subset, embedding_key
from defectscope.ops.gaussian import mahalanobis, pack_lower, unpack_lower
from defectscope.ops.moments import FoldAccumulators, GaussianAccumulator, precision_cholesky_of


class PadimEmbedding(nn.Module):
    """Backbone features -> the kept channels of all layers at the first layer's resolution.

    Channels are selected before upsampling, so the discarded ones are never resized. Output:
    ``(B, D, h, w)`` with ``D = len(feature_index)`` and ``(h, w)`` the stride-4 map size.
    """

    def __init__(self, extractor: nn.Module, feature_index: torch.Tensor, channels: list[int]):
        super().__init__()
        self.extractor = extractor
        offsets = np.cumsum([0, *channels])
        index = feature_index.numpy()
        for i in range(len(channels)):
            local = index[(index >= offsets[i]) & (index < offsets[i + 1])] - offsets[i]
            self.register_buffer(f"keep{i}", torch.from_numpy(local).long(), persistent=False)
        self.n_layers = len(channels)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)
        size = features[0].shape[-2:]
        parts = []
        for i, feature in enumerate(features):
            keep = getattr(self, f"keep{i}")
            if keep.numel() == 0:
                continue
            part = feature.index_select(1, keep)
            if part.shape[-2:] != size:
                part = F.interpolate(part, size=size, mode="nearest")
            parts.append(part)
        return torch.cat(parts, dim=1)


def graph_key(config: PadimConfig, embedding: PadimEmbedding, extractor: Extractor) -> str:
    """What the exported embedding graph depends on, for the engine's cache: the config and the
    weights file's SHA-256 (found again without PyTorch, :func:`~.lean.embedding_key`), or
    where the weights are not a file, the weights themselves."""
    from hashlib import sha256

    key = embedding_key(config)
    if key is not None:
        return key
    parts = ("padim-embedding", config.input_shape, extractor.channels)
    digest = sha256(repr(parts).encode())
    for tensor in embedding.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    for i in range(embedding.n_layers):
        digest.update(getattr(embedding, f"keep{i}").numpy().tobytes())
    return digest.hexdigest()[:24]


def graph_meta(extractor: Extractor, feature_index: torch.Tensor) -> dict[str, Any]:
    """Stored with the cached embedding graph: what the torch-free path (:mod:`.lean`) needs to
    fit and score with it without building the network."""
    return {
        "channels": list(extractor.channels),
        "feature_index": feature_index.tolist(),
        "feature_size": list(extractor.sizes[0]),
        "weights_source": extractor.weights_source,
    }


class PadimModel(PatchMapModule):
    """Images -> Mahalanobis distance maps, upsampled and smoothed; score = map maximum.

    Buffers: ``mean (P, D)``, ``precision_chol (P, D, D)`` (inverse lower Cholesky factors),
    ``feature_index (D,)`` and the upsample + blur matrices ``rows (S, h)``, ``cols (S, w)``.
    """

    def __init__(
        self,
        embedding: PadimEmbedding,
        feature_index: torch.Tensor,
        mean: torch.Tensor,
        precision_chol: torch.Tensor,
        feature_size: tuple[int, int],
        config: PadimConfig,
        info: dict[str, Any],
        illumination: Illumination,
    ) -> None:
        super().__init__(
            embedding, illumination, feature_size, config.input_shape, config.sigma, info
        )
        self.register_buffer("feature_index", feature_index)
        self.register_buffer("mean", mean)
        self.register_buffer("precision_chol", precision_chol)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S) -> (B, P, D)`` patch embeddings."""
        return self.patch_features(images)

    def maps_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        return self.upsample(mahalanobis(emb, self.mean, self.precision_chol))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self.maps_from_embeddings(self.embed(images))
        return image_max(maps), maps

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {
            "mean": self.mean,
            # W = L^-1 is lower triangular: storing only its lower half halves the file.
            "precision_chol_lower": pack_lower(self.precision_chol),
            "feature_index": self.feature_index,
            "illumination_target": self.illumination.target,
        }


def _n_features(config: PadimConfig, extractor: Extractor) -> int:
    total = sum(extractor.channels)
    n = config.n_features
    if n is None:
        n = extractor.spec.n_features or total
    if n == 0:
        n = total
    if not 0 < n <= total:
        raise ConfigError(
            f"n_features must be between 1 and {total} (the channels of layers "
            f"{', '.join(extractor.spec.layers)}), got {n}"
        )
    return n


class PadimFitter(FoldedStatistics, SharedIllumination, Fitter):
    """Streams embeddings into a per-position Gaussian accumulator (float64, Chan merge), one
    per fold of the training images (:class:`~defectscope.models.padim.lean.FoldedStatistics`)."""

    merge_holdout = True

    def __init__(self, config: PadimConfig, hooks: Hooks) -> None:
        self.config = config
        self.hooks = hooks
        self.extractor = build_extractor(config, hooks)
        n = _n_features(config, self.extractor)
        rng = np.random.default_rng(config.seed)
        self.feature_index = torch.from_numpy(
            channel_subset(sum(self.extractor.channels), n, rng)
        ).long()
        self.embedding = PadimEmbedding(
            self.extractor.module, self.feature_index, self.extractor.channels
        ).eval()
        h, w = self.extractor.sizes[0]
        self.folds = FoldAccumulators(h * w, n)
        self.illumination = Illumination(config.illumination)
        # A module for embedding only until finalize: no factor yet.
        self._module = self._new_module(torch.zeros(h * w, n), torch.empty(0), {})

    def _new_module(self, mean, precision_chol, info) -> PadimModel:
        module = PadimModel(
            self.embedding,
            self.feature_index,
            mean,
            precision_chol,
            self.extractor.sizes[0],
            self.config,
            info,
            self.illumination,
        ).eval()
        key = graph_key(self.config, self.embedding, self.extractor)
        meta = graph_meta(self.extractor, self.feature_index)
        module.accelerate("embedding", self.hooks, key, self.config.input_shape, meta)
        return module

    def update(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.illumination.calibrate(images)
        with torch.inference_mode():
            self.folds.current.update(self._module.embed(images).numpy())
        release_free_memory()  # keeps the per-batch temporaries from piling up

    # -- shards: each accumulates its images; the accumulators merge exactly (Chan et al.) --
    shardable = True

    def partial(self) -> dict[str, Any]:
        return self.folds.merged().state()

    def combine(self, partials: list[dict[str, Any]]) -> None:
        for part in partials:
            self.folds.current.merge(GaussianAccumulator.from_state(part))

    def _module_from(self, acc: GaussianAccumulator) -> PadimModel:
        # Drop the previous factor first: old and new together would double the largest tensor.
        self._module.precision_chol = torch.empty(0)
        release_free_memory()
        precision = torch.from_numpy(precision_cholesky_of(acc, self.config.regularization))
        info = {
            "feature_size": list(self.extractor.sizes[0]),
            "n_train": acc.count,
            "weights_source": self.extractor.weights_source,
            "weights_sha256": self.extractor.weights_sha256,
        }
        mean = torch.from_numpy(acc.mean.astype(np.float32))
        self._module = self._new_module(mean, precision, info)
        return self._module


def make_fitter(config: PadimConfig, hooks: Hooks) -> PadimFitter:
    return PadimFitter(config, hooks)


def restore(
    config: PadimConfig, tensors: dict[str, torch.Tensor], info: dict[str, Any], hooks: Hooks
) -> PadimModel:
    """Rebuild a fitted module from a model file's tensors; raises ValueError on a mismatch."""
    check_weights_unchanged(config, info.get("weights_sha256"))
    extractor = build_extractor(config, hooks)
    total = sum(extractor.channels)
    index = tensors["feature_index"]
    if index.dtype != torch.int64 or index.ndim != 1 or not len(index):
        raise ValueError(
            f"feature_index must be a 1-D int64 tensor, got {index.dtype} {tuple(index.shape)}"
        )
    if int(index.min()) < 0 or int(index.max()) >= total or len(index.unique()) != len(index):
        raise ValueError(f"feature_index holds values outside 0..{total - 1} or repeats")
    h, w = extractor.sizes[0]
    dim = len(index)
    expected = {"mean": (h * w, dim), "precision_chol_lower": (h * w, dim * (dim + 1) // 2)}
    for name, shape in expected.items():
        got = tensors[name]
        if tuple(got.shape) != shape or got.dtype != torch.float32:
            raise ValueError(f"{name} must be float32 {shape}, got {got.dtype} {tuple(got.shape)}")
    embedding = PadimEmbedding(extractor.module, index, extractor.channels).eval()
    module = PadimModel(
        embedding,
        index,
        tensors["mean"],
        unpack_lower(tensors["precision_chol_lower"], dim),
        (h, w),
        config,
        info,
        restore_illumination(config.illumination, tensors),
    ).eval()
    key = graph_key(config, embedding, extractor)
    meta = graph_meta(extractor, index)
    module.accelerate("embedding", hooks, key, config.input_shape, meta)
    return module
