"""PatchCore's scoring module and fitter (Roth et al., 2022).

Patch features of two stages of an ImageNet CNN are averaged over a small neighbourhood
("locally aware"), the coarser stage upsampled to the finer one, and concatenated. Fitting keeps
a greedy k-center coreset of all training patches as the memory bank. A test patch scores its
distance to the nearest bank patch; the map is upsampled and smoothed like PaDiM's; the image
score is the largest patch score, optionally re-weighted by how dense the bank is around it.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones.specs import check_weights_unchanged
from defectscope.errors import ConfigError
from defectscope.models.base import Fitter, Hooks
from defectscope.models.features import (
    Extractor,
    Illumination,
    PatchMapModule,
    SharedIllumination,
    build_extractor,
    restore_illumination,
)
from defectscope.models.patchcore.config import DEFAULT_LAYERS, PatchcoreConfig
from defectscope.models.patchcore.lean import (
    MAX_BATCH,
    SHARD_OVERSAMPLE,
    BankBuilder,
    FoldedBank,
    embedding_key,
)
from defectscope.ops import k_nearest, nearest


class PatchcoreEmbedding(nn.Module):
    """Images -> ``(B, D, h, w)`` locally averaged features of every layer at the first
    layer's resolution (the coarser ones upsampled bilinearly)."""

    def __init__(self, extractor: nn.Module, neighbourhood: int) -> None:
        super().__init__()
        self.extractor = extractor
        self.neighbourhood = neighbourhood

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.extractor(images)
        size = features[0].shape[-2:]
        k = self.neighbourhood
        parts = []
        for feature in features:
            if k > 1:
                feature = F.avg_pool2d(
                    feature, k, stride=1, padding=k // 2, count_include_pad=False
                )
            if feature.shape[-2:] != size:
                feature = F.interpolate(feature, size=size, mode="bilinear", align_corners=False)
            parts.append(feature)
        return torch.cat(parts, dim=1)


def graph_key(config: PatchcoreConfig, embedding: PatchcoreEmbedding, extractor: Extractor) -> str:
    """The config and the weights file's SHA-256 (found again without PyTorch,
    :func:`~.lean.embedding_key`), or where the weights are not a file, the weights."""
    key = embedding_key(config)
    if key is not None:
        return key
    parts = ("patchcore-embedding", config.input_shape, config.neighbourhood)
    digest = sha256(repr((*parts, extractor.spec.layers, extractor.channels)).encode())
    for tensor in embedding.state_dict().values():
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:24]


def graph_meta(extractor: Extractor) -> dict[str, Any]:
    """Stored with the cached embedding graph: what the torch-free path (:mod:`.lean`) needs."""
    return {
        "channels": list(extractor.channels),
        "dim": sum(extractor.channels),
        "feature_size": list(extractor.sizes[0]),
        "weights_source": extractor.weights_source,
    }


class PatchcoreModel(PatchMapModule):
    """Images -> nearest-bank-patch distance maps, upsampled and smoothed; score = the
    largest patch distance (optionally re-weighted).

    Buffers: ``bank (M, D)``, ``bank_neighbors (M, b)`` (each bank row's ``b`` nearest bank rows,
    for the re-weighting) and the upsample + blur matrices ``rows (S, h)``, ``cols (S, w)``.
    """

    max_batch = MAX_BATCH

    def __init__(
        self,
        embedding: PatchcoreEmbedding,
        bank: torch.Tensor,
        bank_neighbors: torch.Tensor,
        feature_size: tuple[int, int],
        config: PatchcoreConfig,
        info: dict[str, Any],
        illumination: Illumination,
    ) -> None:
        super().__init__(
            embedding, illumination, feature_size, config.input_shape, config.sigma, info
        )
        self.register_buffer("bank", bank)
        self.register_buffer("bank_neighbors", bank_neighbors)
        self.reweight = config.reweight
        self.k = min(config.k_nearest, max(1, len(bank)))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.patch_features(images)
        batch, positions, dim = feats.shape
        queries = feats.reshape(batch * positions, dim)
        if self.k == 1:
            dist, index = nearest(queries, self.bank)
        else:
            dists, indices = k_nearest(queries, self.bank, self.k)
            dist, index = dists.mean(dim=1), indices[:, 0]
        dist = dist.view(batch, positions)
        maps = self.upsample(dist)
        # The maximum of the smoothed map: a defect spanning a few patches outscores one noisy
        # patch (screw: 0.955 as the largest patch distance, 0.968 smoothed; see the study).
        scores = maps.flatten(1).amax(dim=1)
        if self.reweight:
            worst = dist.argmax(dim=1)
            peak = dist.gather(1, worst[:, None]).squeeze(1)
            scores = scores * self._weights(feats, index.view(batch, positions), worst, peak)
        return scores, maps

    def _weights(self, feats, index, worst, peak) -> torch.Tensor:
        """The paper's ``1 - exp(s*) / sum_{m in N_b(m*)} exp(|m_test* - m|)``, computed as
        ``1 - 1 / sum exp(d - s*)`` so that large distances cannot overflow."""
        rows = torch.arange(feats.shape[0])
        query = feats[rows, worst]  # (B, D): the most anomalous patch of each image
        nearest_bank = index[rows, worst]  # (B,)
        neighbors = self.bank[self.bank_neighbors[nearest_bank]]  # (B, b, D)
        d = torch.linalg.vector_norm(neighbors - query[:, None], dim=2)
        return 1.0 - 1.0 / torch.exp((d - peak[:, None]).clamp(max=50.0)).sum(dim=1)

    def fitted_state(self) -> dict[str, torch.Tensor]:
        return {
            "bank": self.bank,
            "bank_neighbors": self.bank_neighbors,
            "illumination_target": self.illumination.target,
        }


def bank_neighbors(bank: torch.Tensor, b: int, chunk: int = 2048) -> torch.Tensor:
    """``(M, b)`` indices of each bank row's ``b`` nearest bank rows (itself first)."""
    b = min(b, len(bank))
    out = torch.empty(len(bank), b, dtype=torch.long)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        d2 = part.pow(2).sum(1, keepdim=True) - 2 * part @ bank.T + bank.pow(2).sum(1)
        d2[torch.arange(len(part)), torch.arange(start, start + len(part))] = -1.0  # self first
        out[start : start + chunk] = d2.topk(b, dim=1, largest=False).indices
    return out


def _layers(config: PatchcoreConfig) -> tuple[str, ...] | None:
    if config.layers:
        return tuple(config.layers)
    if config.backbone not in DEFAULT_LAYERS:
        from defectscope.backbones.specs import resolve_spec

        resolve_spec(config.backbone)  # an unknown name or a library model: its own message
        raise ConfigError(
            f"patchcore has no default layers for backbone {config.backbone!r}; pass --layers "
            f"(defaults exist for {', '.join(DEFAULT_LAYERS)})"
        )
    return DEFAULT_LAYERS[config.backbone]


class PatchcoreFitter(FoldedBank, SharedIllumination, Fitter):
    """Collects training patches (float32) and selects the coreset in :meth:`finalize`.

    A second :meth:`finalize` after more :meth:`update` calls (the engine's held-out images,
    once they have set the threshold) selects a coreset of the new patches only, at the same
    ratio, and adds it to the bank: the union of the two coresets covers every patch, as in
    distributed k-center, for a fraction of a second selection over all of them. Patches are
    dropped once their coreset is taken.

    Shards (:meth:`partial`) each select a coreset of their own patches at
    ``SHARD_OVERSAMPLE`` times the ratio; :meth:`combine` selects the configured ratio of all
    patches from the union. Every patch is then within the shard's radius plus the second
    selection's radius of the bank (triangle inequality, in the projected space).
    """

    merge_holdout = True
    shardable = True

    def __init__(self, config: PatchcoreConfig, hooks: Hooks) -> None:
        self.config = config
        self.hooks = hooks
        self.extractor = build_extractor(config, hooks, _layers(config))
        self.embedding = PatchcoreEmbedding(self.extractor.module, config.neighbourhood).eval()
        self.illumination = Illumination(config.illumination)
        self._module = self._new_module(torch.empty(0, 0), torch.empty(0, 0, dtype=torch.long), {})
        self.builder = BankBuilder(config, hooks.on_stage)

    def _new_module(self, bank, neighbors, info) -> PatchcoreModel:
        module = PatchcoreModel(
            self.embedding,
            bank,
            neighbors,
            self.extractor.sizes[0],
            self.config,
            info,
            self.illumination,
        ).eval()
        key = graph_key(self.config, self.embedding, self.extractor)
        meta = graph_meta(self.extractor)
        module.accelerate("embedding", self.hooks, key, self.config.input_shape, meta)
        return module

    def update(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        self.illumination.calibrate(images)
        with torch.inference_mode():
            feats = self._module.patch_features(images)
        self.builder.add(feats.numpy().copy())

    def _module_from(self, bank: np.ndarray) -> PatchcoreModel:
        bank, config = torch.from_numpy(bank), self.config
        neighbors = (
            bank_neighbors(bank, config.num_neighbors)
            if config.reweight
            else torch.zeros(len(bank), 0, dtype=torch.long)
        )
        info = {
            "feature_size": list(self.extractor.sizes[0]),
            **self.builder.info(),
            "weights_source": self.extractor.weights_source,
            "weights_sha256": self.extractor.weights_sha256,
        }
        self._module = self._new_module(bank, neighbors, info)
        return self._module

    # -- shards ---------------------------------------------------------------------------------
    def partial(self) -> dict[str, Any]:
        patches = self.builder.take_patches()
        if patches is None:
            raise ValueError("partial before any update: no training patches")
        bank, radius = self.builder.select(patches, self.config.coreset_ratio * SHARD_OVERSAMPLE)
        return {
            "bank": bank,
            "radius": radius,
            "n_patches": self.builder.n_patches,
            "n_images": self.builder.n_images,
        }

    def combine(self, partials: list[dict[str, Any]]) -> None:
        union = np.concatenate([np.asarray(p["bank"]) for p in partials])
        n_patches = sum(int(p["n_patches"]) for p in partials)
        k = max(1, round(self.config.coreset_ratio * n_patches))
        bank, radius = self.builder.select(union, k / len(union))
        local = [p["radius"] for p in partials if p["radius"] is not None]
        if radius is not None and local:
            radius += max(local)
        self.builder.extend(bank, radius)
        self.builder.n_patches += n_patches
        self.builder.n_images += sum(int(p["n_images"]) for p in partials)


def make_fitter(config: PatchcoreConfig, hooks: Hooks) -> PatchcoreFitter:
    return PatchcoreFitter(config, hooks)


def restore(
    config: PatchcoreConfig, tensors: dict[str, torch.Tensor], info: dict[str, Any], hooks: Hooks
) -> PatchcoreModel:
    """Rebuild a fitted module from a model file's tensors; raises ValueError on a mismatch."""
    check_weights_unchanged(config, info.get("weights_sha256"))
    extractor = build_extractor(config, hooks, _layers(config))
    dim = sum(extractor.channels)
    bank, neighbors = tensors["bank"], tensors["bank_neighbors"]
    if bank.dtype != torch.float32 or bank.ndim != 2 or bank.shape[1] != dim or not len(bank):
        raise ValueError(f"bank must be float32 (M, {dim}), got {bank.dtype} {tuple(bank.shape)}")
    b = min(config.num_neighbors, len(bank)) if config.reweight else 0
    if neighbors.dtype != torch.int64 or tuple(neighbors.shape) != (len(bank), b):
        raise ValueError(
            f"bank_neighbors must be int64 ({len(bank)}, {b}), got {neighbors.dtype} "
            f"{tuple(neighbors.shape)}"
        )
    if b and (int(neighbors.min()) < 0 or int(neighbors.max()) >= len(bank)):
        raise ValueError(f"bank_neighbors holds indices outside 0..{len(bank) - 1}")
    embedding = PatchcoreEmbedding(extractor.module, config.neighbourhood).eval()
    illumination = restore_illumination(config.illumination, tensors)
    module = PatchcoreModel(
        embedding, bank, neighbors, extractor.sizes[0], config, info, illumination
    ).eval()
    key = graph_key(config, embedding, extractor)
    module.accelerate("embedding", hooks, key, config.input_shape, graph_meta(extractor))
    return module
