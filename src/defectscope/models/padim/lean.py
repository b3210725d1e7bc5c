"""PaDiM without PyTorch: the fitter and the scoring module of the lean path
(:mod:`defectscope.models.lean`), with the same statistics (:mod:`defectscope.ops.moments`),
tensors and model file as :class:`~defectscope.models.padim.model.PadimModel`."""

from __future__ import annotations

from typing import Any

import numpy as np

from defectscope.backbones.specs import resolve_spec
from defectscope.errors import BackboneError
from defectscope.models.lean import (
    LeanEmbedding,
    LeanGain,
    LeanPatchModule,
    gain_target,
    graph_key,
    saved_target,
)
from defectscope.models.padim.config import PadimConfig
from defectscope.ops.moments import (
    FoldAccumulators,
    GaussianAccumulator,
    in_chunks,
    lower_inverse,
    mahalanobis,
    precision_cholesky_of,
)


def channel_subset(total: int, n_features: int, rng: np.random.Generator) -> np.ndarray:
    """The random channels PaDiM keeps: ``n_features`` of ``total``, sorted, drawn from ``rng``
    (``np.random.default_rng(seed)`` gives a model's ``feature_index``)."""
    return np.sort(rng.choice(total, size=n_features, replace=False))


def embedding_key(config: PadimConfig) -> str | None:
    """The cache key of PaDiM's embedding graph (:func:`~defectscope.models.lean.graph_key`):
    its kept channels follow from ``n_features`` (None: the backbone's default, resolved so
    that ``n_features=100`` and the default 100 share one graph) and ``seed``."""
    n = config.n_features
    if n is None:
        try:
            layers = tuple(config.layers) if config.layers else None
            n = resolve_spec(config.backbone, layers).n_features  # 0: every channel
        except BackboneError:
            return None  # the PyTorch path says what is wrong with the name
    return graph_key("padim-embedding", config, n, config.seed)


class PadimLean(LeanPatchModule):
    """uint8 images ``(B, H, W, 3)`` -> ``(scores (B,), maps (B, H, W))``: what
    :class:`~defectscope.models.padim.model.PadimModel` computes, with numpy."""

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
        super().__init__(embedding, target, config, info)
        self.mean = mean
        self.precision_chol = precision_chol
        self.feature_index = feature_index

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        emb = self.embedding(images, self.target)
        return self.scores_and_maps(mahalanobis(emb, self.mean, self.precision_chol))

    def fitted_state(self) -> dict[str, np.ndarray]:
        """The model file's tensors, as :meth:`PadimModel.fitted_state` names them."""
        rows, cols = np.tril_indices(self.mean.shape[1])
        return {
            "mean": self.mean,
            "precision_chol_lower": np.ascontiguousarray(self.precision_chol[:, rows, cols]),
            "feature_index": self.feature_index,
            "illumination_target": np.asarray([self.target], dtype=np.float32),
        }

    def updated(self, config: PadimConfig, batches) -> PadimLean:
        """This model with more good images folded in (uint8 ``(B, H, W, 3)`` batches): the
        accumulated Gaussian of each position is rebuilt from the mean, the covariance (the
        inverse of the saved whitening factor, float64) and ``n_train``, the new embeddings
        merged in, and the precision factor recomputed, as a fit on all the images computes it
        (to float32 rounding of the saved factor)."""
        count = int(self.info.get("n_train", 0))
        if count < 2:
            raise ValueError("this model records no n_train of at least 2: refit it to update")
        positions, dim = self.mean.shape
        acc = GaussianAccumulator(positions, dim)
        acc.count, acc.mean = count, self.mean.astype(np.float64)
        diagonal = np.arange(dim)

        def rebuild(start: int, stop: int) -> None:
            # the whitening factor W is lower triangular and cov = W^-1 W^-T
            factor = lower_inverse(self.precision_chol[start:stop].astype(np.float64))
            cov = np.matmul(factor, factor.transpose(0, 2, 1))
            cov[:, diagonal, diagonal] -= config.regularization
            acc.scatter[start:stop] = cov * (count - 1)

        in_chunks(positions, 512, rebuild)  # float64 temporaries of 512 positions per thread
        for batch in batches:
            acc.update(self.embedding.fp32(batch, self.target))
        precision = precision_cholesky_of(acc, config.regularization)
        info = {**self.info, "n_train": acc.count}
        mean = acc.mean.astype(np.float32)
        return PadimLean(
            self.embedding, mean, precision, self.feature_index, self.target, config, info
        )

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
        target = saved_target(tensors)
        factor = np.zeros((positions, dim, dim), dtype=np.float32)
        rows, cols = np.tril_indices(dim)
        factor[:, rows, cols] = tensors["precision_chol_lower"]
        return cls(embedding, tensors["mean"], factor, index, target, config, info)


class FoldedStatistics:
    """The out-of-fold protocol of both PaDiM fitters (:class:`~defectscope.models.base.Fitter`):
    one Gaussian accumulator per fold, merged exactly for the final model and for the model
    that did not see a fold. Memory: one accumulator (:meth:`fold_bytes`) per fold."""

    folds: FoldAccumulators
    #: scores each training image with a model that did not see it (see the engine)
    out_of_fold = True

    def start_fold(self, fold: int) -> None:
        """Later :meth:`update` calls belong to ``fold``."""
        self.folds.start(fold)

    def fold_bytes(self) -> int:
        """Memory one more fold takes: a closed fold is kept packed (its mean and the lower
        triangle of its scatter, :class:`~defectscope.ops.moments.FoldAccumulators`), about
        half of the accumulator being fed."""
        positions, dim = self.folds.shape
        return 8 * positions * (dim + dim * (dim + 1) // 2)

    def finalize(self):
        return self._module_from(self.folds.merged())

    def without_fold(self, fold: int):
        """The module fitted on every fold but ``fold`` (exact: the merge of the others)."""
        return self._module_from(self.folds.merged(without=fold))

    def _module_from(self, acc: GaussianAccumulator): ...


class PadimLeanFitter(FoldedStatistics, LeanGain):
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
        weights: dict[str, str | None],
    ) -> None:
        self.config = config
        self.embedding = embedding
        self.feature_index = feature_index
        self.weights = weights  # weights_source and weights_sha256, for the fit info
        h, w = embedding.feature_size
        self.folds = FoldAccumulators(h * w, len(feature_index))
        self.target = float("nan")

    def update(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        if np.isnan(self.target):  # the first images seen set the gain target, as in PyTorch
            self.target = gain_target(images)
        self.folds.current.update(self.embedding.fp32(images, self.target))

    def _module_from(self, acc: GaussianAccumulator) -> PadimLean:
        config = self.config
        precision = precision_cholesky_of(acc, config.regularization)
        info = {
            "feature_size": list(self.embedding.feature_size),
            "n_train": acc.count,
            **self.weights,
        }
        mean = acc.mean.astype(np.float32)
        return PadimLean(
            self.embedding, mean, precision, self.feature_index, self.target, config, info
        )


# -- the torch-free path's contract (defectscope.models.lean.LeanPath) ---------------------------


def lean_key(config: PadimConfig) -> str | None:
    return embedding_key(config)


def lean_fitter(config: PadimConfig, embedding, meta: dict, weights: dict, on_stage=None):
    index = np.asarray(meta["feature_index"], dtype=np.int64)
    return PadimLeanFitter(config, embedding, index, weights)


def lean_restore(config: PadimConfig, embedding, meta: dict, tensors: dict, info: dict):
    index = np.asarray(meta["feature_index"], dtype=np.int64)
    return PadimLean.restore(embedding, index, config, tensors, info)


def lean_update(config: PadimConfig, module: PadimLean, batches) -> PadimLean:
    return module.updated(config, batches)
