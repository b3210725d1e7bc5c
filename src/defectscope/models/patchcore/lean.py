"""PatchCore without PyTorch: the fitter and the scoring module of the lean path
(:mod:`defectscope.models.lean`), and the coreset selection both paths share."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from defectscope.errors import ConfigError
from defectscope.memory import release_free_memory
from defectscope.models.lean import (
    LEAN_ILLUMINATION,
    LeanEmbedding,
    LeanGain,
    LeanPatchModule,
    gain_target,
    graph_key,
    saved_target,
)
from defectscope.models.patchcore.config import (
    IVF_FROM_ROWS,
    IVF_PROBES,
    PatchcoreConfig,
    memory_budget_bytes,
)
from defectscope.ops.coreset import greedy_coreset, greedy_projected, project, random_projection
from defectscope.ops.search import InvertedIndex, mean_nearest_distance, nearest_distance

log = logging.getLogger(__name__)

#: images per forward pass of either module: the nearest-neighbour temporaries grow with it
MAX_BATCH = 4
#: a shard keeps this many times its share of the coreset; the driver's second selection over
#: the union brings it down to the configured ratio (distributed k-center)
SHARD_OVERSAMPLE = 2


def embedding_key(config: PatchcoreConfig) -> str | None:
    """The cache key of PatchCore's embedding graph (:func:`~defectscope.models.lean.graph_key`)."""
    return graph_key("patchcore-embedding", config, config.neighbourhood)


def lean_supported(config: PatchcoreConfig) -> bool:
    """Whether the lean module computes what the PyTorch module would for ``config``: not the
    re-weighting (PyTorch only), and an illumination done in numpy."""
    return not config.reweight and config.illumination in LEAN_ILLUMINATION


def select(
    patches: np.ndarray,
    ratio: float,
    config: PatchcoreConfig,
    on_stage: Callable[[str], None] | None = None,
) -> tuple[np.ndarray, float | None]:
    """A coreset of ``ratio`` of ``patches (N, D)`` and its covering radius (None unless greedy:
    random selections promise no radius)."""
    n = len(patches)
    k = max(1, round(ratio * n))
    rng = np.random.default_rng(config.seed)
    radius = None
    on_pick = _announce(on_stage, config.coreset_method, k, n)
    if config.coreset_method == "none" or k >= n:
        index = np.arange(n)
        radius = 0.0  # every patch is in the bank
    elif config.coreset_method == "random":
        index = rng.permutation(n)[:k]
    else:
        # the exact greedy reads the patches in place: a copy would double a chunk's memory
        pool = None
        if config.coreset_method == "approximate":
            pool = rng.permutation(n)[: max(k, round(config.presample * n))]
        selected = greedy_coreset(
            patches if pool is None else patches[pool],
            k,
            projection_dim=config.projection_dim,
            seed=config.seed,
            on_pick=on_pick,
        )
        index = selected.indices if pool is None else pool[selected.indices]
        radius = selected.radius
    return np.ascontiguousarray(patches[index]), radius


def _announce(
    on_stage: Callable[[str], None] | None, method: str, k: int, n: int
) -> Callable[[int, int], None] | None:
    """Says which selection starts; returns the greedy's pick counter for the progress line."""
    if on_stage is None:
        return None
    stage = f"selecting a {method} coreset of {k:,} of {n:,} patches"
    on_stage(stage)
    if method in ("greedy", "approximate") and k < n:
        return lambda done, total: on_stage(f"{stage}: {done:,} of {total:,} picks")
    return None


def greedy_bytes(config: PatchcoreConfig, dim: int) -> int:
    """Bytes per point the greedy selection holds beside the points: the projection of
    ``projection_dim`` floats (all ``dim`` without one) and its three per-point distances."""
    projected = config.projection_dim if 0 < config.projection_dim < dim else dim
    return (projected + 3) * 4


def row_bytes(config: PatchcoreConfig, dim: int) -> int:
    """Bytes one waiting patch of ``dim`` float32 features takes until its coreset is chosen:
    the row itself and what :func:`select` allocates per row beside it (the greedy's projected
    copy of ``projection_dim`` floats and its three per-row distance arrays; the approximate
    method's presampled copy and its projection; a permutation's index). The memory budget
    bounds these together, so the selection of a full chunk stays inside it too."""
    greedy = greedy_bytes(config, dim)
    overhead = {
        "greedy": greedy,
        "approximate": math.ceil(config.presample * (dim * 4 + greedy)) + 8,
        "random": 8,
        "none": 8,
    }[config.coreset_method]
    return dim * 4 + overhead


#: the exact selection's temporary file may take at most this part of its disk's free space
SPILL_SHARE = 0.5


class ExactPool:
    """Every training patch of a fit, kept for one exact greedy selection over all of them
    (:class:`BankBuilder` uses it where their projections fit in the memory budget): the
    projection, all the greedy reads, in memory (:func:`greedy_bytes` per patch with the
    selection's distances); the patches themselves in an unnamed temporary file, read back for
    the rows selected. The file has no name from the start, so nothing is left behind however
    the fit ends; it holds ``dim`` floats per patch (311 MB for screw's 512,000 patches)."""

    def __init__(self, rows: int, dim: int, config: PatchcoreConfig) -> None:
        self.config = config
        self.dim = dim
        self.projection = random_projection(dim, config.projection_dim, config.seed)
        self.z = np.empty((rows, self.projection.shape[1]), dtype=np.float32)
        self.n = 0
        self.file = tempfile.TemporaryFile(prefix="defectscope-patches-")

    @staticmethod
    def fits(config: PatchcoreConfig, rows: int, dim: int, budget: int) -> bool:
        """Whether the selection of ``rows`` patches of ``dim`` features may be exact: the greedy
        method, its projections and distances within ``budget`` bytes, and the temporary file
        within :data:`SPILL_SHARE` of the free space of the temporary directory."""
        if config.coreset_method != "greedy" or rows * greedy_bytes(config, dim) > budget:
            return False
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if rows * dim * 4 > SPILL_SHARE * free:
            log.info(
                "the bank is selected from the folds' coresets: %d MB of patches would not fit "
                "in the temporary directory's free %d MB",
                rows * dim * 4 >> 20,
                free >> 20,
            )
            return False
        return True

    def add(self, rows: np.ndarray) -> None:
        """Append ``rows (N, dim)``: their projection here, the rows to the file."""
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if self.n + len(rows) > len(self.z):  # more patches than announced: grow
            size = max(2 * len(self.z), self.n + len(rows))
            grown = np.empty((size, self.z.shape[1]), dtype=np.float32)
            grown[: self.n] = self.z[: self.n]
            self.z = grown
        self.z[self.n : self.n + len(rows)] = project(rows, self.projection)
        self.file.seek(self.n * self.dim * 4)  # reads in between moved the position
        self.file.write(memoryview(rows).cast("B"))
        self.n += len(rows)

    def select(
        self, start: int, stop: int, ratio: float, on_stage: Callable[[str], None] | None
    ) -> tuple[np.ndarray, float]:
        """:func:`select` of ``ratio`` of the patches ``start:stop`` (in the order added): the
        same rows and radius, from their projections."""
        n = stop - start
        k = max(1, round(ratio * n))
        on_pick = _announce(on_stage, "greedy", k, n)
        if k >= n:
            return self.read(np.arange(start, stop)), 0.0
        indices, radius = greedy_projected(
            self.z[start:stop], k, seed=self.config.seed, on_pick=on_pick
        )
        return self.read(indices + start), radius

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The patches at ``indices``, in that order, from the file."""
        self.file.flush()
        out = np.empty((len(indices), self.dim), dtype=np.float32)
        size = self.dim * 4
        for row, index in zip(out, indices.tolist()):
            self.file.seek(index * size)
            if self.file.readinto(memoryview(row).cast("B")) != size:
                raise OSError("the temporary file of training patches was cut short")
        return out

    def close(self) -> None:
        """Drop the projections and the file."""
        self.file.close()
        self.z = np.empty((0, 0), dtype=np.float32)


class BankBuilder:
    """Training patches -> the memory bank, for both fitters (PyTorch and lean).

    Patches are kept until a coreset is taken from them (:meth:`finalize`, :meth:`start_fold`,
    or a shard's selection), then dropped. A later :meth:`finalize` after more patches (the
    engine's held-out images, once they have set the threshold) selects a coreset of the new
    patches only, at the same ratio, and appends it: the union of the coresets covers every
    patch, as in distributed k-center. The reported radius is the largest of the selections'.

    With folds (the engine's out-of-fold scores, :meth:`start_fold`), each fold's patches are
    reduced to a coreset of ``SHARD_OVERSAMPLE`` times the ratio as soon as the next fold
    starts, so only one fold's patches are ever held; the bank is then the configured ratio
    selected from the union of the folds' coresets (distributed k-center, as a sharded fit
    does), and :meth:`rows_without` is the same selection from every fold but one: the bank a
    fit that never saw that fold would have.

    Where the engine has said how many images the folds will hold (:meth:`expect_images`) and
    the projections of all their patches fit in the memory budget (:meth:`ExactPool.fits`: 140
    bytes per lite0 patch, so 0.1 GB holds 714,000, 446 images at 320 px), the final bank is
    instead one exact greedy selection over every patch, as the paper's PatchCore takes it
    (:class:`ExactPool`); the folds' coresets, selected from the same projections, still give
    the banks without a fold. Above that the union of coresets bounds memory and time.
    """

    def __init__(self, config: PatchcoreConfig, on_stage: Callable[[str], None] | None) -> None:
        self.config = config
        self.on_stage = on_stage
        self.patches: list[np.ndarray] = []  # patches not yet in a coreset
        self.n_images = 0
        self.n_patches = 0  # every patch seen, in a coreset or not
        self.bank: np.ndarray | None = None  # the bank of an earlier finalize or combine
        self.radius: float | None = None
        self.fold: int | None = None  # the fold of the patches not yet in a coreset
        #: per fold: its oversampled coreset, that selection's radius, its number of patches
        self.folds: dict[int, tuple[np.ndarray, float | None, int]] = {}
        self._fold_patches = 0
        self.budget = memory_budget_bytes(config)
        self._pending_rows = 0
        #: in a fit with folds, the waiting patches are written into this buffer of the budget's
        #: size (allocated at the first fold, its pages touched only as rows arrive) instead of
        #: a list joined when the chunk is reduced: the join would hold the chunk twice
        self._buffer: np.ndarray | None = None
        self._chunks: list[tuple[np.ndarray, float | None]] = []  # the current fold's reductions
        self.n_chunks = 0  # chunks reduced before their fold closed (0: nothing over budget)
        #: images the folds will hold in all, where the engine said (:meth:`expect_images`)
        self.expected_images: int | None = None
        #: every patch for one exact selection (None: not possible, or every fold is fed)
        self._pool: ExactPool | None = None
        #: the exact selection over every patch, once every fold is fed (bank, radius)
        self._exact: tuple[np.ndarray, float] | None = None

    def expect_images(self, n: int) -> None:
        """The folds will hold ``n`` images in all: the bank may then be one exact selection
        (see the class)."""
        self.expected_images = n

    def add(self, feats: np.ndarray) -> None:
        """The ``(B, P, D)`` patch embeddings of ``B`` training images. In a fit with folds,
        they go to the exact selection's pool where it was possible (decided at the first
        batch), or else the patches waiting for their coreset are reduced to one (of twice the
        ratio) whenever they would exceed the memory budget: memory stays bounded, time linear
        in the images."""
        rows = feats.reshape(-1, feats.shape[-1])
        if self.fold is not None and self.n_patches == 0 and self.expected_images is not None:
            total = self.expected_images * feats.shape[1]  # decided at the first batch
            if ExactPool.fits(self.config, total, rows.shape[1], self.budget):
                self._pool = ExactPool(total, rows.shape[1], self.config)
        if self._pool is not None:
            self._pool.add(rows)
            self._count(feats)
            return
        per_row = row_bytes(self.config, rows.shape[1])
        capacity = self.budget // per_row
        if len(rows) > capacity:
            raise ConfigError(
                f"the memory budget ({self.budget / 1e9:.3g} GB) is below one batch's patches "
                f"and their selection ({len(rows) * per_row / 1e9:.3g} GB): raise "
                "memory_budget or lower batch_size"
            )
        if self.fold is not None and self._pending_rows + len(rows) > capacity:
            self._reduce_chunk()
            self.n_chunks += 1
        if self.fold is not None:
            if self._buffer is None or self._buffer.shape[1] != rows.shape[1]:
                self._buffer = np.empty((capacity, rows.shape[1]), dtype=np.float32)
            start = sum(len(p) for p in self.patches)
            self._buffer[start : start + len(rows)] = rows
            rows = self._buffer[start : start + len(rows)]
        self.patches.append(rows)
        self._pending_rows += len(rows)
        self._count(feats)

    def _count(self, feats: np.ndarray) -> None:
        self.n_images += feats.shape[0]
        self.n_patches += feats.shape[0] * feats.shape[1]
        self._fold_patches += feats.shape[0] * feats.shape[1]

    def _reduce_chunk(self) -> None:
        """The waiting patches of the current fold -> a coreset of twice the ratio, kept until
        the fold closes."""
        patches = self.take_patches()
        if patches is None:
            return
        part, radius = self.select(patches, self.config.coreset_ratio * SHARD_OVERSAMPLE)
        del patches
        self._chunks.append((part, radius))

    def take_patches(self) -> np.ndarray | None:
        """The patches not yet in a coreset (and forget them), or None."""
        if not self.patches:
            return None
        if self.fold is not None and self._buffer is not None:
            # the rows are already contiguous in the buffer: a view, valid until the next add
            patches = self._buffer[: sum(len(p) for p in self.patches)]
        else:
            patches = np.concatenate(self.patches) if len(self.patches) > 1 else self.patches[0]
        self.patches = []
        self._pending_rows = 0
        release_free_memory()
        return patches

    def select(self, patches: np.ndarray, ratio: float) -> tuple[np.ndarray, float | None]:
        """:func:`select` with this builder's config and stage reporting."""
        return select(patches, ratio, self.config, self.on_stage)

    def extend(self, part: np.ndarray, radius: float | None) -> None:
        """Append a coreset (and its radius) to the bank."""
        self.bank = part if self.bank is None else np.concatenate([self.bank, part])
        radii = [r for r in (radius, self.radius) if r is not None]
        self.radius = max(radii) if radii else None

    def finalize(self) -> np.ndarray:
        """The bank of everything seen so far."""
        if self.fold is not None:
            self._settle()
            if self._exact is not None:
                self.bank, self.radius = self._exact
            else:
                self.bank, self.radius = self._merge(list(self.folds))
            return self.bank
        patches = self.take_patches()
        if patches is not None:
            self.extend(*self.select(patches, self.config.coreset_ratio))
            del patches
        if self.bank is None:
            raise ValueError("finalize before any update: no training patches")
        return self.bank

    def start_fold(self, fold: int) -> None:
        """Later patches belong to ``fold``; the previous fold's are reduced now."""
        if self.fold is None and self.patches:
            raise ValueError("start_fold after patches outside any fold")
        self._close_fold()
        self.fold = fold

    def _settle(self) -> None:
        """Every fold is fed: the last one is reduced, the waiting room dropped, and with a
        pool the exact selection over every patch made (so that its projections are freed
        before the out-of-fold scoring)."""
        self._close_fold()
        self._buffer = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            self._exact = pool.select(0, pool.n, self.config.coreset_ratio, self.on_stage)
            pool.close()
            release_free_memory()

    def _close_fold(self) -> None:
        if self._pool is not None:  # the fold's patches are the pool's last rows
            if self._fold_patches:
                end = self._pool.n
                ratio = self.config.coreset_ratio * SHARD_OVERSAMPLE
                part, radius = self._pool.select(
                    end - self._fold_patches, end, ratio, self.on_stage
                )
                self.folds[self.fold] = (part, radius, self._fold_patches)
                self._fold_patches = 0
            return
        if self.fold is None or (not self.patches and not self._chunks):
            return
        self._reduce_chunk()
        parts, self._chunks = self._chunks, []
        part = np.concatenate([p for p, _ in parts]) if len(parts) > 1 else parts[0][0]
        radii = [r for _, r in parts if r is not None]
        self.folds[self.fold] = (part, max(radii) if radii else None, self._fold_patches)
        self._fold_patches = 0

    def _merge(self, folds: list[int]) -> tuple[np.ndarray, float | None]:
        """The configured ratio of the patches of ``folds``, selected from their coresets; the
        radius covers every patch (the folds' radius plus the selection's: triangle
        inequality)."""
        if not folds:
            raise ValueError("finalize before any update: no training patches")
        parts = [self.folds[f] for f in sorted(folds)]
        union = np.concatenate([p[0] for p in parts])
        k = max(1, round(self.config.coreset_ratio * sum(p[2] for p in parts)))
        bank, radius = self.select(union, k / len(union))
        local = [p[1] for p in parts if p[1] is not None]
        if radius is not None and local:
            radius += max(local)
        return bank, radius

    def rows_without(self, fold: int) -> np.ndarray:
        """The bank of every fold but ``fold`` (after every fold was fed)."""
        self._settle()  # every fold is fed: out-of-fold scoring should not carry what fed them
        others = [f for f in self.folds if f != fold]
        if not others:
            raise ValueError(f"only fold {fold} holds patches: nothing to score it with")
        return self._merge(others)[0]

    def info(self) -> dict[str, Any]:
        """The bank's facts for the model's fit info."""
        return {
            "n_train": self.n_images,
            "n_patches": self.n_patches,
            "bank_size": 0 if self.bank is None else len(self.bank),
            "coreset_radius": self.radius,
            "memory_budget_gb": round(self.budget / 1e9, 3),
            "chunks_reduced_early": self.n_chunks,
            # one exact greedy over every patch, or the configured ratio of the folds' coresets
            "bank_selection": "exact" if self._exact is not None else "coreset union",
        }


def bank_index(bank: np.ndarray, config: PatchcoreConfig) -> InvertedIndex | None:
    """The index ``config.search`` asks for on ``bank``: None (exact search) for ``exact``, for
    ``k_nearest`` > 1 (the index finds the nearest row only), and for ``auto`` below
    :data:`IVF_FROM_ROWS` rows; built from the bank alone (seeded), so a loaded model rebuilds
    the index it was evaluated with."""
    if config.search == "exact" or config.k_nearest > 1:
        return None
    if config.search == "auto" and len(bank) < IVF_FROM_ROWS:
        return None
    return InvertedIndex(bank, seed=config.seed)


class PatchcoreLean(LeanPatchModule):
    """uint8 images ``(B, H, W, 3)`` -> ``(scores (B,), maps (B, H, W))``: what
    :class:`~defectscope.models.patchcore.model.PatchcoreModel` computes (without re-weighting),
    with numpy: each patch's distance to its nearest bank row, or its mean distance to its
    ``k_nearest`` nearest."""

    max_batch = MAX_BATCH

    def __init__(
        self,
        embedding: LeanEmbedding,
        bank: np.ndarray,
        target: float,
        config: PatchcoreConfig,
        info: dict[str, Any],
    ) -> None:
        super().__init__(embedding, target, config, info)
        self.bank = bank
        self.k = min(config.k_nearest, max(1, len(bank)))
        #: the inverted-file index searched instead of the whole bank (see ``search``), or None
        self.index = bank_index(bank, config)

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feats = self.embedding(images, self.target)
        batch, positions, dim = feats.shape
        queries = feats.reshape(batch * positions, dim)
        if self.k > 1:
            dist = mean_nearest_distance(queries, self.bank, self.k)
        elif self.index is None:
            dist = nearest_distance(queries, self.bank)
        else:
            dist = self.index.nearest_distance(queries, IVF_PROBES)
        return self.scores_and_maps(dist.reshape(batch, positions))

    def updated(self, config: PatchcoreConfig, batches, on_stage=None) -> PatchcoreLean:
        """This model with more good images folded in: a coreset of their patches, chosen by
        the rule of fit (``coreset_ratio`` of them), appended to the bank; nothing of the bank
        is dropped, so no score can rise."""
        parts = []
        for batch in batches:
            feats = self.embedding.fp32(batch, self.target)
            parts.append(feats.reshape(-1, feats.shape[-1]))
        if not parts:
            return self
        patches = np.concatenate(parts)
        if len(patches) * row_bytes(config, patches.shape[1]) > memory_budget_bytes(config):
            raise ConfigError(
                f"{len(patches):,} new patches (with their selection) exceed the memory budget of "
                f"{memory_budget_bytes(config) / 1e9:.3g} GB: update with fewer images at a time"
            )
        chosen, _ = select(patches, config.coreset_ratio, config, on_stage)
        bank = np.ascontiguousarray(np.concatenate([self.bank, chosen]), dtype=np.float32)
        positions = self.embedding.feature_size[0] * self.embedding.feature_size[1]
        added = len(patches) // positions
        info = {
            **self.info,
            "bank_size": len(bank),
            "n_train": int(self.info.get("n_train", 0)) + added,
        }
        return PatchcoreLean(self.embedding, bank, self.target, config, info)

    def fitted_state(self) -> dict[str, np.ndarray]:
        """The model file's tensors, as :meth:`PatchcoreModel.fitted_state` names them."""
        return {
            "bank": self.bank,
            "bank_neighbors": np.zeros((len(self.bank), 0), dtype=np.int64),
            "illumination_target": np.asarray([self.target], dtype=np.float32),
        }

    @classmethod
    def restore(
        cls,
        embedding: LeanEmbedding,
        dim: int,
        config: PatchcoreConfig,
        tensors: dict[str, np.ndarray],
        info: dict[str, Any],
    ) -> PatchcoreLean:
        """From a model file's tensors; ValueError on a shape or dtype mismatch."""
        bank, neighbors = tensors["bank"], tensors["bank_neighbors"]
        if bank.dtype != np.float32 or bank.ndim != 2 or bank.shape[1] != dim or not len(bank):
            raise ValueError(f"bank must be float32 (M, {dim}), got {bank.dtype} {bank.shape}")
        if neighbors.dtype != np.int64 or neighbors.shape != (len(bank), 0):
            raise ValueError(
                f"bank_neighbors must be int64 ({len(bank)}, 0), got {neighbors.shape}"
            )
        return cls(embedding, bank, saved_target(tensors), config, info)


class FoldedBank:
    """The out-of-fold protocol of both PatchCore fitters (:class:`~defectscope.models.base.
    Fitter`): each fold's patches are reduced on their own (:class:`BankBuilder`), the bank
    without a fold is selected from the others' coresets, and the final bank is one exact
    selection over every patch where the budget allows, else selected from all folds'
    coresets."""

    builder: BankBuilder
    #: scores each training image with a model that did not see it (see the engine)
    out_of_fold = True

    def start_fold(self, fold: int) -> None:
        """Later :meth:`update` calls belong to ``fold``."""
        self.builder.start_fold(fold)

    def fold_bytes(self) -> int:
        """Memory one more fold takes: a few bank rows, nothing that matters."""
        return 0

    def expect_images(self, n: int) -> None:
        """The bank may be one exact selection (:class:`BankBuilder`)."""
        self.builder.expect_images(n)

    def finalize(self):
        return self._module_from(self.builder.finalize())

    def without_fold(self, fold: int):
        """The module whose bank is selected from every fold's patches but ``fold``'s."""
        return self._module_from(self.builder.rows_without(fold))

    def _module_from(self, bank: np.ndarray): ...


class PatchcoreLeanFitter(FoldedBank, LeanGain):
    """:class:`~defectscope.models.patchcore.model.PatchcoreFitter` without PyTorch: uint8
    batches in, a :class:`PatchcoreLean` out (the same bank, union of coresets, radius)."""

    lean = True
    supervised = False
    merge_holdout = True
    shardable = False

    def __init__(
        self,
        config: PatchcoreConfig,
        embedding: LeanEmbedding,
        weights: dict[str, str | None],
        on_stage: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.embedding = embedding
        self.weights = weights  # weights_source and weights_sha256, for the fit info
        self.builder = BankBuilder(config, on_stage)
        self.target = float("nan")

    def update(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        if np.isnan(self.target):
            self.target = gain_target(images)
        self.builder.add(self.embedding.fp32(images, self.target))

    def _module_from(self, bank: np.ndarray) -> PatchcoreLean:
        config = self.config
        info = {
            "feature_size": list(self.embedding.feature_size),
            **self.builder.info(),
            **self.weights,
        }
        return PatchcoreLean(self.embedding, bank, self.target, config, info)


# -- the torch-free path's contract (defectscope.models.lean.LeanPath) ---------------------------


def lean_key(config: PatchcoreConfig) -> str | None:
    return embedding_key(config) if lean_supported(config) else None


def lean_fitter(config: PatchcoreConfig, embedding, meta: dict, weights: dict, on_stage=None):
    return PatchcoreLeanFitter(config, embedding, weights, on_stage)


def lean_restore(config: PatchcoreConfig, embedding, meta: dict, tensors: dict, info: dict):
    return PatchcoreLean.restore(embedding, int(meta["dim"]), config, tensors, info)


def lean_update(config: PatchcoreConfig, module: PatchcoreLean, batches) -> PatchcoreLean:
    return module.updated(config, batches)
