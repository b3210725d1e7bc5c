"""Pretrained feature extractors for the detectors built on a CNN (PaDiM, PatchCore)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from defectscope.backbones import (
    RANDOM,
    BackboneSpec,
    FeatureExtractor,
    build_backbone,
    resolve_spec,
    weights_digest,
)
from defectscope.errors import BackboneError
from defectscope.models.base import Hooks
from defectscope.models.common import BackboneOptions


@dataclass(frozen=True)
class Extractor:
    """A built feature extractor and what a probe pass found out about it.

    Attributes:
        module: images ``(B, 3, S, S)`` in 0..1 -> one feature map per layer.
        spec: the resolved backbone spec (its layers are the ones used).
        channels: channels per layer.
        sizes: ``(h, w)`` per layer at the configured input size.
        weights_source: where the weights came from.
        weights_sha256: SHA-256 of the weights file, when ``weights`` is a file (taken now, when
            the weights are read, so a model records the file it was really fitted with).
    """

    module: FeatureExtractor
    spec: BackboneSpec
    channels: list[int]
    sizes: list[tuple[int, int]]
    weights_source: str
    weights_sha256: str | None


def build_extractor(
    options: BackboneOptions, hooks: Hooks, default_layers: tuple[str, ...] | None = None
) -> Extractor:
    """Build the backbone of ``options`` up to its last feature layer, frozen, in eval mode."""
    layers = options.layers or default_layers
    spec = resolve_spec(options.backbone, tuple(layers) if layers else None)
    hooks.stage(f"building backbone {options.backbone}")
    digest = None
    if options.weights not in (None, RANDOM) and Path(options.weights).is_file():
        digest = weights_digest(options.weights)
    model, source = build_backbone(spec, options.weights)
    extractor = FeatureExtractor(model, spec.layers).eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        probe = extractor(torch.zeros(1, 3, options.image_size, options.image_size))
    return Extractor(
        extractor,
        spec,
        [int(f.shape[1]) for f in probe],
        [tuple(f.shape[-2:]) for f in probe],
        source,
        digest,
    )


def check_weights_unchanged(options: BackboneOptions, expected: str | None) -> None:
    """A saved model must see the same ``weights`` file it was fitted with."""
    if expected is None or options.weights in (None, RANDOM):
        return
    path = Path(options.weights)
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
