"""Pretrained feature extractors for the detectors built on a CNN (PaDiM, PatchCore)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from defectscope.backbones.networks import FeatureExtractor, build_backbone
from defectscope.backbones.specs import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDOM,
    BackboneSpec,
    resolve_spec,
    weights_sha256,
)
from defectscope.models.base import AnomalyModule, Hooks
from defectscope.models.common import BackboneOptions


@dataclass(frozen=True)
class Extractor:
    """A built feature extractor and what a probe pass found out about it.

    Attributes:
        module: images ``(B, 3, H, W)`` in 0..1 -> one feature map per layer.
        spec: the resolved backbone spec (its layers are the ones used).
        channels: channels per layer.
        sizes: ``(h, w)`` per layer at the configured input shape.
        weights_source: where the weights came from.
        weights_sha256: SHA-256 of the weights file, when ``weights`` is a file (taken now, when
            the weights are read, so a model records the file it was really fitted with).
    """

    module: nn.Module
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
        digest = weights_sha256(options.weights)
    model, source = build_backbone(spec, options.weights)
    extractor = FeatureExtractor(model, spec.layers).eval()
    for p in extractor.parameters():
        p.requires_grad_(False)
    with torch.inference_mode():
        probe = extractor(torch.zeros(1, 3, *options.input_shape))
    return Extractor(
        extractor,
        spec,
        [int(f.shape[1]) for f in probe],
        [tuple(f.shape[-2:]) for f in probe],
        source,
        digest,
    )


class Illumination(nn.Module):
    """Per-image lighting correction of images in 0..1, before the backbone.

    - ``none``: unchanged.
    - ``gain``: every image multiplied by one factor so that its mean intensity is ``target``
      (clipped to 0..1): undoes a global brightness change. ``target`` is the mean intensity of
      the first training batch, set by :meth:`calibrate` and saved with the model.
    - ``standardize``: every channel of every image shifted and scaled to ImageNet's per-channel
      mean and standard deviation: undoes brightness and contrast changes, also per colour.
    - ``local``: local contrast normalisation: every pixel minus the mean of its
      ``LOCAL_WINDOW`` neighbourhood, divided by the neighbourhood's standard deviation, then
      mapped to ImageNet's mean and spread: undoes uneven lighting across the image too.

    It runs in PyTorch before the (possibly accelerated) feature extractor, so the exported
    feature graph does not depend on the fitted target; the whole-pipeline export includes it.
    """

    #: keeps a black image from being divided by zero (1/255 of grey)
    EPS = 1.0 / 255.0
    #: side of the local contrast normalisation window, in pixels at the input size
    LOCAL_WINDOW = 15

    def __init__(self, mode: str, target: torch.Tensor | None = None) -> None:
        super().__init__()
        self.mode = mode
        self.register_buffer("target", torch.full((1,), float("nan")) if target is None else target)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def calibrate(self, images: torch.Tensor) -> None:
        """Set ``target`` from the first images seen (later calls change nothing); recorded
        whatever the mode, used by ``gain``."""
        if bool(torch.isnan(self.target).all()):
            self.target.fill_(float(images.mean()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.mode == "gain":
            level = images.mean(dim=(1, 2, 3), keepdim=True).clamp_min(self.EPS)
            return (images * (self.target / level)).clamp(0.0, 1.0)
        if self.mode == "standardize":
            mu = images.mean(dim=(2, 3), keepdim=True)
            sd = images.std(dim=(2, 3), keepdim=True).clamp_min(self.EPS)
            return ((images - mu) / sd * self.std + self.mean).clamp(0.0, 1.0)
        if self.mode == "local":
            k = self.LOCAL_WINDOW
            mu = F.avg_pool2d(images, k, stride=1, padding=k // 2, count_include_pad=False)
            sq = F.avg_pool2d(images * images, k, stride=1, padding=k // 2, count_include_pad=False)
            sd = (sq - mu * mu).clamp_min(0.0).sqrt().clamp_min(4 * self.EPS)
            # One unit of local contrast becomes half of ImageNet's spread: most pixels stay in
            # range after the clip.
            return ((images - mu) / sd * (0.5 * self.std) + self.mean).clamp(0.0, 1.0)
        return images


class SharedIllumination:
    """For fitters with an :class:`Illumination`: what shards of a sharded fit share is its
    target, taken from the first training batch as an unsharded fit takes it."""

    illumination: Illumination

    def shared_state(self, first_batch: torch.Tensor) -> dict[str, float]:
        self.illumination.calibrate(first_batch)  # as the first update of a serial fit
        return {"illumination_target": float(self.illumination.target)}

    def set_shared_state(self, state: dict[str, float]) -> None:
        self.illumination.target.fill_(state["illumination_target"])


def restore_illumination(mode: str, tensors: dict[str, torch.Tensor]) -> Illumination:
    """The fitted :class:`Illumination` of a model file; ValueError if its target is bad."""
    target = tensors.get("illumination_target")
    if target is None or target.dtype != torch.float32 or tuple(target.shape) != (1,):
        raise ValueError("illumination_target must be a float32 tensor of shape (1,)")
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"illumination_target must be in (0, 1], got {float(target)}")
    return Illumination(mode, target.clone())


class PatchMapModule(AnomalyModule):
    """What the CNN-feature detectors share: lighting correction, the (possibly accelerated)
    patch embedding, and upsampling + smoothing of patch scores to the input size.

    Buffers: ``rows (H, h)`` and ``cols (W, w)``, bilinear upsampling then Gaussian smoothing
    as two small matrix products (see :func:`defectscope.ops.resize_blur_matrix`).
    """

    def __init__(
        self,
        embedding: nn.Module,
        illumination: Illumination,
        feature_size: tuple[int, int],
        input_shape: tuple[int, int],
        sigma: float,
        info: dict,
    ) -> None:
        super().__init__()
        from defectscope.ops import resize_blur_matrix

        self.illumination = illumination
        self.embedding = embedding
        h, w = feature_size
        height, width = input_shape
        self.register_buffer("rows", resize_blur_matrix(h, height, sigma).clone())
        self.register_buffer("cols", resize_blur_matrix(w, width, sigma).clone())
        self.feature_size = (h, w)
        self.info = info

    def patch_features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` images in 0..1 -> ``(B, P, D)`` patch embeddings.

        One copy into (B, P, D) order: the statistics and distances then read each D-vector
        contiguously, several times faster than on the (B, D, P) layout the network produces.
        """
        images = self.illumination(images)
        return self.run("embedding", images).flatten(2).transpose(1, 2).contiguous()

    def upsample(self, patch_scores: torch.Tensor) -> torch.Tensor:
        """``(B, P)`` patch scores -> ``(B, H, W)`` smoothed maps at the input shape."""
        from defectscope.ops import resize_blur

        h, w = self.feature_size
        return resize_blur(patch_scores.view(-1, h, w), self.rows, self.cols)

    def fit_info(self) -> dict:
        return dict(self.info)
