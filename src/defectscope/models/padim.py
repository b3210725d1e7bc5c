"""PaDiM: a Gaussian per patch position over pretrained CNN features (Defard et al., 2020)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones import (
    DEFAULT_BACKBONE,
    RANDOM,
    FeatureExtractor,
    build_backbone,
    resolve_spec,
    weights_digest,
)
from defectscope.data.loader import iter_batches
from defectscope.errors import BackboneError, ConfigError
from defectscope.memory import release_free_memory
from defectscope.models.base import Detector
from defectscope.ops import GaussianAccumulator, mahalanobis, resize_blur, resize_blur_matrix
from defectscope.ops.gaussian import pack_lower, precision_cholesky_of, unpack_lower
from defectscope.progress import progress_bar
from defectscope.runtime import compile_module, graph_key, resolve_runtime

log = logging.getLogger(__name__)


def channel_subset(total: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """The random channels PaDiM keeps: ``n_features`` of ``total``, sorted, drawn from ``rng``
    (``np.random.default_rng(seed)`` gives a model's ``feature_index_``)."""
    return np.sort(rng.choice(total, size=n_features, replace=False))


class PadimEmbedding(nn.Module):
    """Backbone features -> the kept channels of all layers at the first layer's resolution.

    Channels are selected before upsampling, so the discarded ones are never resized. Output:
    ``(B, D, h, w)`` with ``D = len(feature_index)`` and ``(h, w)`` the stride-4 map size.
    """

    def __init__(
        self, extractor: FeatureExtractor, feature_index: torch.Tensor, channels: list[int]
    ):
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


class PaDiM(Detector):
    """Patch Distribution Modeling.

    Features of the stride-4, -8 and -16 stages of an ImageNet CNN are concatenated per patch,
    a seeded random subset of ``n_features`` channels is kept, and a Gaussian is fitted at every
    patch position from defect-free images. A test patch scores its Mahalanobis distance; the
    map is upsampled bilinearly to the input size and smoothed (``sigma``); the image score is
    its maximum.

    A held-out slice of the training images (``holdout``) is scored by the model fitted on the
    rest to choose the pass/fail threshold (the ``threshold_quantile`` of their scores) without
    any test label; its statistics are then merged in, so the final model uses every image.

    Args:
        backbone: a built-in name (``efficientnet_lite0``, ``resnet18``, ``wide_resnet50_2``) or
            ``timm:ARCH`` / ``torchvision:ARCH`` with ``layers``.
        layers: module names of the feature layers; None for the backbone's stride-4/8/16 stages.
        weights: None to find pretrained weights (see :mod:`defectscope.backbones`), a file path,
            or ``"random"`` (timing only).
        n_features: channels kept; None for the backbone's default, 0 for all.
        image_size: square input side in pixels.
        regularization: added to every covariance diagonal; keeps it invertible when fewer
            images than channels are seen (0.01, as in the paper).
        sigma: standard deviation of the Gaussian smoothing of the map, in pixels.
        holdout: fraction of training images held out to choose the threshold.
        threshold_quantile: quantile of held-out scores used as the pass/fail threshold.
        runtime: ``auto`` (ONNX Runtime when installed), ``torch`` or ``onnxruntime``.
        seed: seed of the channel subset and of the held-out slice.
        batch_size: images per forward pass.
        num_workers: threads decoding images ahead of the forward pass.
        progress: show progress bars.
    """

    name: ClassVar[str] = "padim"
    fitted_attributes: ClassVar[tuple[str, ...]] = (
        "mean_",
        "precision_chol_",
        "feature_index_",
        "threshold_",
    )
    #: at most this many held-out images: their embeddings are kept until the threshold is set
    max_holdout: ClassVar[int] = 32

    def __init__(
        self,
        *,
        backbone: str = DEFAULT_BACKBONE,
        layers: tuple[str, ...] | list[str] | None = None,
        weights: str | None = None,
        n_features: int | None = None,
        image_size: int = 256,
        regularization: float = 0.01,
        sigma: float = 4.0,
        holdout: float = 0.1,
        threshold_quantile: float = 0.99,
        runtime: str = "auto",
        seed: int = 0,
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
    ) -> None:
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.n_features = n_features
        self.image_size = image_size
        self.regularization = regularization
        self.sigma = sigma
        self.holdout = holdout
        self.threshold_quantile = threshold_quantile
        self.runtime = runtime
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress
        self._embedder = None

    def _validate(self) -> None:
        super()._validate()
        self._check_threshold_quantile()
        if not self.regularization > 0:
            raise ConfigError(f"regularization must be > 0, got {self.regularization!r}")
        if not 0 <= self.holdout < 0.5:
            raise ConfigError(f"holdout must be in [0, 0.5), got {self.holdout!r}")
        if self.sigma < 0:
            raise ConfigError(f"sigma must be >= 0, got {self.sigma!r}")
        resolve_runtime(self.runtime)

    def _build_extractor(self) -> tuple[FeatureExtractor, list[int], tuple[int, int]]:
        spec = resolve_spec(self.backbone, tuple(self.layers) if self.layers else None)
        model, source = build_backbone(spec, self.weights)
        log.info("backbone %s weights: %s", self.backbone, source)
        self.weights_source_ = source
        extractor = FeatureExtractor(model, spec.layers).eval()
        with torch.inference_mode():
            probe = extractor(torch.zeros(1, 3, self.image_size, self.image_size))
        channels = [int(f.shape[1]) for f in probe]
        return extractor, channels, tuple(probe[0].shape[-2:])

    def _set_embedder(self, extractor: FeatureExtractor, channels: list[int]) -> None:
        module = PadimEmbedding(extractor, self.feature_index_, channels).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        key = graph_key(
            "padim-embedding",
            self.image_size,
            channels,
            self.feature_index_,
            *module.state_dict().values(),
        )
        self._embedder = compile_module(module, self.runtime, self.image_size, key)

    def _check_weights_unchanged(self) -> None:
        """A model loaded from disk must see the same --weights file it was fitted with."""
        expected = getattr(self, "weights_sha256_", None)
        if expected is None or self.weights in (None, RANDOM):
            return
        path = Path(self.weights)
        if not path.is_file():
            raise BackboneError(
                f"the weights file this model was fitted with is missing: {path}; restore it, "
                "or load with weights=PATH (--weights) pointing to the same file"
            )
        found = weights_digest(path)
        if found != expected:
            raise BackboneError(
                f"weights file {path} changed since the model was fitted (SHA-256 "
                f"{found[:12]}... instead of {expected[:12]}...): its scores would be "
                "meaningless; pass the original file or fit again"
            )

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` images in 0..1 -> ``(B, P, D)`` patch embeddings."""
        if self._embedder is None:
            self.check_fitted()
            self._check_weights_unchanged()
            extractor, channels, _ = self._build_extractor()
            self._set_embedder(extractor, channels)
        # One copy into (B, P, D) order: the statistics and the distance then read each
        # D-vector contiguously, which makes their batched matrix products several times faster
        # than on the (B, D, P) layout the network produces.
        return self._embedder(images).flatten(2).transpose(1, 2).contiguous()

    # -- fitting ---------------------------------------------------------------
    def _fit(self, paths: list[Path]) -> None:
        extractor, channels, feature_size = self._build_extractor()
        total = sum(channels)
        n_features = self.n_features
        if n_features is None:
            spec = resolve_spec(self.backbone, tuple(self.layers) if self.layers else None)
            n_features = spec.n_features or total
        if n_features == 0:
            n_features = total
        if not 0 < n_features <= total:
            raise ConfigError(
                f"n_features must be between 1 and {total} (the channels of layers "
                f"{', '.join(extractor.layers)}), got {n_features}"
            )
        rng = np.random.default_rng(self.seed)
        self.feature_index_ = torch.from_numpy(channel_subset(total, n_features, rng)).long()
        self.feature_size_ = feature_size
        self._set_embedder(extractor, channels)

        order = rng.permutation(len(paths))
        n_holdout = min(self.max_holdout, len(paths) - 2, max(1, round(self.holdout * len(paths))))
        n_holdout = n_holdout if self.holdout > 0 else 0
        held = [paths[i] for i in order[:n_holdout]]
        rest = [paths[i] for i in sorted(order[n_holdout:])]
        positions = feature_size[0] * feature_size[1]
        acc = GaussianAccumulator(positions, n_features)
        held_embeddings = []
        with progress_bar(len(paths), "fitting", enabled=self.progress) as bar:
            for items, keep in ((held, True), (rest, False)):
                batches = iter_batches(items, self.image_size, self.batch_size, self.num_workers)
                for idx, batch in batches:
                    with torch.inference_mode():
                        emb = self.embed(batch)
                    if keep:
                        held_embeddings.append(emb)
                    else:
                        acc.update(emb)
                    release_free_memory()  # keeps the per-batch temporaries from piling up
                    bar.update(len(idx))

        if held_embeddings:
            self._set_gaussian(acc)
            with torch.inference_mode():
                maps = torch.cat([self._maps_from_embeddings(e) for e in held_embeddings])
                self.threshold_ = self._threshold(self.image_scores(maps).numpy())
            # The held-out images join the final model: the saved Gaussian uses every image.
            for emb in held_embeddings:
                acc.update(emb)
            del held_embeddings, maps
            release_free_memory()
        else:
            self.threshold_ = float("inf")
            log.warning("holdout=0: no threshold was chosen; every image will pass")
        self._set_gaussian(acc)
        self.n_train_ = acc.count
        self.n_holdout_ = n_holdout

    def _set_gaussian(self, acc: GaussianAccumulator) -> None:
        self.mean_ = acc.mean.float()
        # Drop the previous factor first (the held-out model's): old and new together would
        # double the largest tensor of the fit (5 GB each for wide_resnet50_2).
        self.precision_chol_ = None
        self.precision_chol_ = precision_cholesky_of(acc, self.regularization)

    # -- scoring ---------------------------------------------------------------
    def _maps_from_embeddings(self, emb: torch.Tensor) -> torch.Tensor:
        h, w = self.feature_size_
        dist = mahalanobis(emb, self.mean_, self.precision_chol_).view(-1, h, w)
        # Bilinear upsampling to the input size, then Gaussian smoothing, as two small matrix
        # products (see resize_blur_matrix); the matrices depend only on sizes and sigma.
        rows = resize_blur_matrix(h, self.image_size, self.sigma)
        cols = resize_blur_matrix(w, self.image_size, self.sigma)
        return resize_blur(dist, rows, cols)

    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        self.check_fitted()
        return self._maps_from_embeddings(self.embed(images))

    # -- persistence -----------------------------------------------------------
    def fitted_info(self) -> dict[str, Any]:
        info = {
            "threshold_": self.threshold_,
            "feature_size_": list(self.feature_size_),
            "n_train_": self.n_train_,
            "n_holdout_": self.n_holdout_,
            "weights_source_": self.weights_source_,
        }
        if self.weights not in (None, RANDOM) and Path(self.weights).is_file():
            info["weights_sha256"] = weights_digest(self.weights)
        return info

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean_": self.mean_,
            # W = L^-1 is lower triangular: storing only its lower half halves the file.
            "precision_chol_lower_": pack_lower(self.precision_chol_),
            "feature_index_": self.feature_index_,
        }

    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any]) -> None:
        self.mean_ = tensors["mean_"].float()
        self.feature_index_ = tensors["feature_index_"].long()
        dim = self.mean_.shape[1]
        self.precision_chol_ = unpack_lower(tensors["precision_chol_lower_"].float(), dim)
        self.threshold_ = float(fitted["threshold_"])
        self.feature_size_ = tuple(fitted["feature_size_"])
        self.n_train_ = fitted.get("n_train_")
        self.n_holdout_ = fitted.get("n_holdout_")
        self.weights_source_ = fitted.get("weights_source_")
        self.weights_sha256_ = fitted.get("weights_sha256")
        self._embedder = None
