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

import contextlib
import logging
import shutil
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator
from hashlib import blake2b, sha256
from typing import Any, Protocol

import numpy as np

from defectscope.backbones.specs import IMAGENET_MEAN, IMAGENET_STD, weights_identity
from defectscope.ops.moments import resize_blur_matrix, upsample_maps

#: part of every cached graph key: a change to what the embedding graph computes bumps it
GRAPH_VERSION = 2
#: the illumination modes done in numpy (``local`` needs PyTorch's pooling)
LEAN_ILLUMINATION = ("none", "gain", "standardize")
#: as ``models.features.Illumination.EPS``: keeps a black image from being divided by zero
EPS = 1.0 / 255.0

Features = Callable[[np.ndarray], np.ndarray]

log = logging.getLogger(__name__)

#: a fit keeps the features of its training images for their out-of-fold scoring up to this
#: many bytes (tire's 210 images at 320 px: 204 MB), in a temporary file: the operating
#: system's page cache, not the process's memory; and at most :data:`MEMO_SHARE` of the
#: temporary directory's free space (where the exact bank selection may take half)
MEMO_BYTES = 1 << 30
MEMO_SHARE = 0.25


class LeanPath(Protocol):
    """What a detector's torch-free module (``DetectorInfo.lean``) provides. The engine
    (:mod:`defectscope.engine.runtimes.lean`) finds the cached graph by :meth:`lean_key`, runs it
    as a :class:`LeanEmbedding` and hands it here; a new detector with a torch-free path writes
    these three functions in its own folder and names the module in its ``DetectorInfo``.

    The fitter returned implements :class:`~defectscope.models.base.Fitter` on numpy arrays
    and the module :class:`~defectscope.models.base.AnomalyModule`'s scoring on numpy arrays;
    both carry ``lean = True``.
    """

    def lean_key(self, config: Any) -> str | None:
        """The cache key of the embedding graph for ``config`` (:func:`graph_key`), or None
        where the torch-free path cannot compute what the PyTorch module would."""

    def lean_fitter(
        self,
        config: Any,
        embedding: LeanEmbedding,
        meta: dict[str, Any],
        weights: dict[str, Any],
        on_stage: Callable[[str], None] | None,
    ) -> Any:
        """A fitter on ``embedding`` (``meta``: the cached graph's metadata; ``weights``: the
        weights' source and digest to record in fit info)."""

    def lean_restore(
        self,
        config: Any,
        embedding: LeanEmbedding,
        meta: dict[str, Any],
        tensors: dict[str, np.ndarray],
        info: dict[str, Any],
    ) -> Any:
        """The scoring module of a model file's ``tensors``; ValueError where they do not fit
        (the PyTorch path then restores the file and says what is wrong)."""

    def lean_update(self, config: Any, module: Any, batches: Any) -> Any:
        """Optional: ``module`` with more good images (uint8 batches) folded in, under the
        rule of fit (``defectscope update``); a detector without it is refitted instead."""


def graph_key(tag: str, config, *extra) -> str | None:
    """The cache key of a detector's embedding graph from its config (backbone, layers, input
    shape) and the SHA-256 of the weights file, with no network built; None where the weights
    are not a file (random, downloaded). ``extra``: what else the graph depends on (PaDiM's
    kept channels, PatchCore's neighbourhood)."""
    identity = weights_identity(config.backbone, config.weights)
    if identity is None:
        return None
    layers = tuple(config.layers) if config.layers else None
    parts = (tag, GRAPH_VERSION, config.input_shape, config.backbone, layers, *extra, identity[0])
    return sha256(repr(parts).encode()).hexdigest()[:24]


def to_float(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, 3)`` uint8 -> ``(B, 3, H, W)`` float32 in 0..1 (as the engine's tensors)."""
    out = np.empty((images.shape[0], images.shape[3], *images.shape[1:3]), dtype=np.float32)
    np.copyto(out, images.transpose(0, 3, 1, 2))  # converted while reordered: one pass
    out /= np.float32(255)
    return out


def illuminate(images: np.ndarray, mode: str, target: float) -> np.ndarray:
    """:class:`~defectscope.models.features.Illumination` in numpy, for ``LEAN_ILLUMINATION``;
    ``gain`` scales ``images`` in place (float32, as :func:`to_float` returns them)."""
    if mode == "gain":
        level = np.maximum(images.mean(axis=(1, 2, 3), keepdims=True), np.float32(EPS))
        images *= np.float32(target) / level
        return np.clip(images, 0.0, 1.0, out=images)
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
    ``features``. The engine may switch ``features`` to a lower precision of the same graph
    (:meth:`use`); ``precision`` and ``int8_graph`` say which runs (what a model file keeps)."""

    def __init__(
        self, features: Features, mode: str, feature_size: tuple[int, int], graph: Any = None
    ) -> None:
        self.features = features
        self._fp32 = features
        self.mode = mode
        self.feature_size = feature_size
        #: the cached fp32 graph ``features`` runs (a path), where known
        self.graph = graph
        self.precision = "fp32"
        self.int8_graph: bytes | None = None

    def use(self, features: Features, precision: str, int8_graph: bytes | None = None) -> None:
        """Compute the features with ``features`` from now on, in ``precision``."""
        self.features, self.precision, self.int8_graph = features, precision, int8_graph

    def inputs(self, images: np.ndarray, target: float) -> np.ndarray:
        """What the graph takes for uint8 ``images``: float32 ``(B, 3, H, W)``, lit."""
        return illuminate(to_float(images), self.mode, target)

    #: the fp32 embeddings of the images fed while a fit runs (:func:`remembered_features`)
    memo: FeatureMemo | None = None

    def __call__(self, images: np.ndarray, target: float) -> np.ndarray:
        """The embeddings images are scored with (in :attr:`precision`); in fp32, those a fit
        has just computed for the same images are read back rather than computed again."""
        if self.memo is not None and self.features is self._fp32:
            kept = self.memo.get(images, target)
            if kept is not None:
                return kept
        return self._patches(self.features(self.inputs(images, target)))

    def fp32(self, images: np.ndarray, target: float) -> np.ndarray:
        """The embeddings in fp32, whatever :attr:`precision` is: what statistics and memory
        banks are built from (at fit and at update)."""
        out = self._patches(self._fp32(self.inputs(images, target)))
        if self.memo is not None:
            self.memo.put(images, target, out)
        return out

    @staticmethod
    def _patches(out: np.ndarray) -> np.ndarray:  # (B, D, h, w) -> (B, P, D)
        batch, dim = out.shape[:2]
        return np.ascontiguousarray(out.reshape(batch, dim, -1).transpose(0, 2, 1))


class FeatureMemo:
    """The fp32 embeddings of images, found by the images' content (and the gain target), in
    a temporary file of at most ``limit`` bytes: a fit scores each training image out of fold
    with the embedding it fed to the other folds' models, not a second forward pass. Threads
    may read it side by side; a full or failing file stops keeping, never the fit."""

    def __init__(self, limit: int = MEMO_BYTES) -> None:
        self.limit = limit
        self.file: Any = None
        self.where: dict[bytes, int] = {}
        self.shape: tuple[int, ...] | None = None  # one image's (P, D)
        self.used = 0
        self.hits = 0
        self.lock = threading.Lock()

    @staticmethod
    def key(image: np.ndarray, target: float) -> bytes:
        digest = blake2b(digest_size=20)
        digest.update(struct.pack("<d", target) + str((image.dtype.str, image.shape)).encode())
        digest.update(memoryview(np.ascontiguousarray(image)).cast("B"))
        return digest.digest()

    def put(self, images: np.ndarray, target: float, feats: np.ndarray) -> None:
        """Keep ``feats[i]`` (float32) as the embedding of ``images[i]``, while there is room."""
        if self.limit <= 0 or feats.dtype != np.float32:
            return
        with self.lock:
            if self.shape is None:
                self.shape = feats.shape[1:]
            if feats.shape[1:] != self.shape:
                return
            size = int(np.prod(self.shape)) * 4
            try:
                for image, row in zip(images, feats):
                    if self.used + size > self.limit:
                        return
                    key = self.key(image, target)
                    if key in self.where:
                        continue
                    if self.file is None:
                        self.file = tempfile.TemporaryFile(prefix="defectscope-features-")
                    self.file.seek(self.used)
                    self.file.write(memoryview(np.ascontiguousarray(row)).cast("B"))
                    self.where[key] = self.used
                    self.used += size
            except OSError as exc:  # a full disk: the fit computes what is not kept
                log.info("out-of-fold features no longer kept (%s)", exc)
                self.limit = 0

    def get(self, images: np.ndarray, target: float) -> np.ndarray | None:
        """The kept embeddings ``(B, P, D)`` of every one of ``images``, or None unless all
        are kept."""
        if not self.where or self.shape is None or not len(images):
            return None
        offsets = [self.where.get(self.key(image, target)) for image in images]
        if any(offset is None for offset in offsets):
            return None
        out = np.empty((len(images), *self.shape), dtype=np.float32)
        size = out[0].nbytes
        with self.lock:
            for row, offset in zip(out, offsets):
                self.file.seek(offset)
                if self.file.readinto(memoryview(row).cast("B")) != size:
                    return None
            self.hits += len(images)
        return out

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        self.file, self.where = None, {}


@contextlib.contextmanager
def remembered_features(embedding: Any, limit: int | None = None) -> Iterator[None]:
    """While the block runs, ``embedding`` (a :class:`LeanEmbedding`; anything else: nothing
    happens) keeps the fp32 features it computes, up to ``limit`` bytes (:data:`MEMO_BYTES`),
    and serves them again for the same images."""
    if limit is None:
        free = shutil.disk_usage(tempfile.gettempdir()).free
        limit = min(MEMO_BYTES, int(MEMO_SHARE * free))
    if not isinstance(embedding, LeanEmbedding) or embedding.memo is not None or limit <= 0:
        yield
        return
    memo = embedding.memo = FeatureMemo(limit)
    try:
        yield
    finally:
        embedding.memo = None
        if memo.hits:
            log.debug("%d out-of-fold embeddings read back, not computed again", memo.hits)
        memo.close()


def gain_target(images: np.ndarray) -> float:
    """The mean intensity of uint8 ``images`` in 0..1: the gain target a fit takes from its
    first batch (as ``Illumination.calibrate``)."""
    return float(np.float32(to_float(images).mean()))


class LeanPatchModule:
    """What the lean modules share (as ``PatchMapModule`` for the PyTorch ones): uint8 images in,
    patch scores upsampled and smoothed to maps at the input shape, the image score their
    maximum."""

    #: takes uint8 images as numpy arrays (the engine feeds it without PyTorch)
    lean = True
    max_batch: int | None = None

    def __init__(self, embedding: LeanEmbedding, target: float, config, info: dict[str, Any]):
        self.embedding = embedding
        self.target = float(target)
        self.info = info
        (h, w), (height, width) = embedding.feature_size, config.input_shape
        self.rows = resize_blur_matrix(h, height, config.sigma)
        self.cols = resize_blur_matrix(w, width, config.sigma)

    def scores_and_maps(self, patch_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, P)`` patch scores -> ``(scores (B,), maps (B, H, W))`` float32."""
        grid = patch_scores.reshape(len(patch_scores), *self.embedding.feature_size)
        maps = upsample_maps(grid.astype(np.float32, copy=False), self.rows, self.cols)
        maps = maps.astype(np.float32, copy=False)
        return maps.reshape(len(maps), -1).max(axis=1), maps

    def fit_info(self) -> dict[str, Any]:
        return dict(self.info)


class LeanGain:
    """The gain target of the lean fitters: taken from the first images they see, or set
    before by :meth:`shared_state` (as :class:`~defectscope.models.features.SharedIllumination`
    does for the PyTorch fitters)."""

    target: float

    def shared_state(self, first_batch: np.ndarray) -> dict[str, float]:
        """Take the target from uint8 ``first_batch`` unless it is already set."""
        if np.isnan(self.target):
            self.target = gain_target(first_batch)
        return {"illumination_target": self.target}


def saved_target(tensors: dict[str, np.ndarray]) -> float:
    """The gain target of a model file's tensors; ValueError if it is missing or bad."""
    target = tensors.get("illumination_target")
    if target is None or target.dtype != np.float32 or target.shape != (1,):
        raise ValueError("illumination_target must be a float32 tensor of shape (1,)")
    if not 0.0 < float(target[0]) <= 1.0:
        raise ValueError(f"illumination_target must be in (0, 1], got {float(target[0])}")
    return float(target[0])
