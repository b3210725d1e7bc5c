"""Per-position Gaussian statistics in numpy (torch-free): the streaming accumulator, inverse
Cholesky factors, the Mahalanobis distance, and the upsample + blur matrices of the maps.

One implementation for both ways a model runs: PyTorch modules wrap these arrays as tensors, and
the torch-free path (:mod:`defectscope.engine.runtimes.lean`) uses them as they are.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import numpy as np

#: positions packed or unpacked at a time (:meth:`GaussianAccumulator.state`): the matrices of
#: 16 positions stay in a core's cache, 3-4x faster than gathering the whole array at once
_PACK_CHUNK = 16


class GaussianAccumulator:
    """Streaming mean and scatter of ``P`` independent ``D``-dimensional Gaussians.

    Each batch is merged with Chan et al.'s pairwise update (batch mean plus batch-centred
    scatter), so memory is ``O(P D^2)`` whatever the number of samples, and the result equals
    the two-pass estimate to float64 rounding.

    The running statistics are float64: summing hundreds of scatter matrices in float32 loses
    the small eigenvalues that the Mahalanobis distance divides by. The per-batch scatter is
    computed in float32 (it is centred on the batch mean, so it is well conditioned), which is
    several times faster on a CPU than float64 matrix products.
    """

    def __init__(self, positions: int, dim: int, *, chunk_bytes: int = 4 << 20) -> None:
        self.count = 0
        self.mean = np.zeros((positions, dim), dtype=np.float64)
        self.scatter = np.zeros((positions, dim, dim), dtype=np.float64)
        self._chunk_bytes = chunk_bytes

    def update(self, x) -> None:
        """Add samples ``x: (B, P, D)`` (an array, or anything ``np.asarray`` takes)."""
        x = np.asarray(x, dtype=np.float32)
        batch, positions, dim = x.shape
        if (positions, dim) != self.mean.shape:
            raise ValueError(
                f"expected samples of shape (B, {self.mean.shape[0]}, {self.mean.shape[1]}), "
                f"got {tuple(x.shape)}"
            )
        batch_mean = x.mean(axis=0)  # (P, D) float32
        total = self.count + batch
        delta = batch_mean - self.mean  # (P, D) float64
        # The batch scatter is P matrices of D x D; chunk the positions so the float32
        # temporary stays under chunk_bytes (wide_resnet50_2 has D = 550): 4 MB, near the
        # cache, updates tire's 4,096 x 100 x 100 sums 1.8x faster than 32 MB, to the same
        # bits (each entry gets the same operations whatever the chunk). The float32 product
        # is added into the float64 sums in place (numpy casts it piece by piece).
        step = max(1, self._chunk_bytes // (4 * dim * dim))
        weight = self.count * batch / total
        for start in range(0, positions, step):
            stop = min(positions, start + step)
            centred = (x[:, start:stop] - batch_mean[start:stop]).transpose(1, 0, 2)  # (p, B, D)
            self.scatter[start:stop] += np.matmul(centred.transpose(0, 2, 1), centred)
            if weight:
                d = delta[start:stop]
                self.scatter[start:stop] += (weight * d)[:, :, None] * d[:, None, :]
        self.mean += delta * (batch / total)
        self.count = total

    def merge(self, other: GaussianAccumulator) -> None:
        """Add the samples summarised by ``other`` (Chan et al.'s pairwise merge, float64)."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(
                f"cannot merge accumulators of shapes {other.mean.shape} and {self.mean.shape}"
            )
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        weight = self.count * other.count / total
        self.scatter += other.scatter
        self.scatter += (weight * delta)[:, :, None] * delta[:, None, :]
        self.mean += delta * (other.count / total)
        self.count = total

    def state(self) -> dict[str, np.ndarray | int]:
        """The statistics as plain values (the scatter's lower triangle only: it is symmetric),
        e.g. to send to another process; :meth:`from_state` rebuilds the accumulator."""
        positions, dim = self.mean.shape
        rows, cols = np.tril_indices(dim)
        lower = np.empty((positions, len(rows)), dtype=np.float64)
        for start in range(0, positions, _PACK_CHUNK):  # a few positions at a time: in cache
            part = slice(start, start + _PACK_CHUNK)
            lower[part] = self.scatter[part][:, rows, cols]
        return {"count": self.count, "mean": self.mean, "scatter_lower": lower}

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray | int]) -> GaussianAccumulator:
        mean = np.asarray(state["mean"], dtype=np.float64)
        positions, dim = mean.shape
        out = cls(positions, dim)
        rows, cols = np.tril_indices(dim)
        lower = np.asarray(state["scatter_lower"], dtype=np.float64)
        for start in range(0, positions, _PACK_CHUNK):
            part = slice(start, start + _PACK_CHUNK)
            scatter = out.scatter[part]
            scatter[:, rows, cols] = lower[part]
            scatter[:, cols, rows] = lower[part]
        out.mean[:] = mean
        out.count = int(state["count"])
        return out

    def covariance(self, regularization: float) -> np.ndarray:
        """Unbiased covariance plus ``regularization * I``: ``(P, D, D)`` float64."""
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.count}")
        cov = self.scatter / (self.count - 1)
        cov[:, np.arange(cov.shape[1]), np.arange(cov.shape[1])] += regularization
        return cov

    @property
    def nbytes(self) -> int:
        """The memory the statistics take."""
        return self.mean.nbytes + self.scatter.nbytes


@dataclass
class PackedGaussian:
    """Statistics as :meth:`GaussianAccumulator.state` gives them: the count, the mean and the
    scatter's lower triangle ``(P, D (D + 1) / 2)`` (rows of :func:`numpy.tril_indices`): what
    the Cholesky factor reads (:func:`precision_cholesky_of`), half the memory of the whole
    scatter and no time spent mirroring it."""

    count: int
    mean: np.ndarray
    scatter_lower: np.ndarray

    def state(self) -> dict[str, np.ndarray | int]:
        return {"count": self.count, "mean": self.mean, "scatter_lower": self.scatter_lower}


class FoldAccumulators:
    """One :class:`GaussianAccumulator` per fold of the training images, so that the statistics
    of every fold but one (the model that did not see that fold, for its out-of-fold scores)
    and of all folds (the final model) are exact merges (Chan et al.), whatever the order.

    Only the fold being fed is held whole; a fold is packed when the next one starts (its
    :meth:`GaussianAccumulator.state`: the scatter's lower triangle, ``D (D + 1) / 2`` of its
    ``D^2`` floats), and :meth:`merged` adds the packed triangles into a
    :class:`PackedGaussian`, never unpacked whole. The merge does on each lower entry what
    :meth:`GaussianAccumulator.merge` does, so the lower triangle (all that the Cholesky factor
    reads) is the same to the bit; PaDiM's fold statistics take about half the memory."""

    #: positions merged at a time: the merge's temporaries are this many packed rows, in cache
    #: (16 positions of 100 channels merge 1.5x faster than 256)
    MERGE_CHUNK = _PACK_CHUNK

    def __init__(self, positions: int, dim: int) -> None:
        self.shape = (positions, dim)
        #: per fold: the accumulator being fed, or a closed fold's packed ``state()``
        self.folds: dict[int, GaussianAccumulator | dict] = {}
        self.current = self.start(0)

    def start(self, fold: int) -> GaussianAccumulator:
        """Later samples belong to ``fold``; returns its accumulator (every other fold is
        packed)."""
        for other, acc in self.folds.items():
            if other != fold and isinstance(acc, GaussianAccumulator):
                self.folds[other] = acc.state()
        acc = self.folds.get(fold)
        if acc is None:
            acc = GaussianAccumulator(*self.shape)
        elif not isinstance(acc, GaussianAccumulator):
            acc = GaussianAccumulator.from_state(acc)
        self.folds[fold] = self.current = acc
        return acc

    def merged(self, without: int | None = None) -> PackedGaussian:
        """The statistics of every fold, or of every fold but ``without``, packed."""
        positions, dim = self.shape
        rows, cols = np.tril_indices(dim)
        count = 0
        mean = np.zeros(self.shape, dtype=np.float64)
        lower = np.zeros((positions, len(rows)), dtype=np.float64)
        for fold, acc in sorted(self.folds.items()):
            if fold == without:
                continue
            if isinstance(acc, GaussianAccumulator):  # the fold being fed: read in place
                n, fold_mean = acc.count, acc.mean
                packed = lambda part, acc=acc: acc.scatter[part][:, rows, cols]  # noqa: E731
            else:
                n, fold_mean = int(acc["count"]), acc["mean"]
                packed = lambda part, acc=acc: acc["scatter_lower"][part]  # noqa: E731
            if n == 0:
                continue
            total = count + n
            delta = fold_mean - mean
            weight = count * n / total
            for start in range(0, positions, self.MERGE_CHUNK):
                part = slice(start, start + self.MERGE_CHUNK)
                lower[part] += packed(part)
                if weight:  # the first fold's term is 0: adding it changes no bit
                    d = delta[part]
                    lower[part] += (weight * d)[:, rows] * d[:, cols]
            mean += delta * (n / total)
            count = total
        return PackedGaussian(count, mean, lower)

    @property
    def count(self) -> int:
        return sum(
            acc.count if isinstance(acc, GaussianAccumulator) else int(acc["count"])
            for acc in self.folds.values()
        )

    @property
    def nbytes(self) -> int:
        """The memory the folds' statistics take (whole and packed)."""
        return sum(
            acc.nbytes
            if isinstance(acc, GaussianAccumulator)
            else acc["mean"].nbytes + acc["scatter_lower"].nbytes
            for acc in self.folds.values()
        )


#: below this size the triangular inverse is one LAPACK call per matrix (see lower_inverse)
_INVERSE_LEAF = 16


def lower_inverse(lower: np.ndarray) -> np.ndarray:
    """Inverse of lower-triangular matrices ``(P, D, D)``, lower triangular again.

    Block recursion ``[[A, 0], [C, B]]^-1 = [[A^-1, 0], [-B^-1 C A^-1, B^-1]]``: the work is in
    batched matrix products (numpy has no batched triangular inverse; a general inverse costs
    twice as much).
    """
    n = lower.shape[-1]
    if n <= _INVERSE_LEAF:
        return np.tril(np.linalg.inv(lower))
    h = n // 2
    a_inv = lower_inverse(lower[:, :h, :h])
    b_inv = lower_inverse(lower[:, h:, h:])
    out = np.zeros_like(lower)
    out[:, :h, :h] = a_inv
    out[:, h:, h:] = b_inv
    out[:, h:, :h] = -np.matmul(b_inv, np.matmul(lower[:, h:, :h], a_inv))
    return out


def precision_cholesky(cov: np.ndarray, *, first_position: int = 0) -> np.ndarray:
    """Inverse of the lower Cholesky factor of each covariance: ``(P, D, D) -> (P, D, D)``.

    With ``cov = L L^T`` and ``W = L^{-1}``, the squared Mahalanobis distance is
    ``|W (x - mean)|^2``: a sum of squares, never negative, unlike ``x^T cov^{-1} x`` in
    floating point. Computed in float64; ``first_position`` only numbers positions in errors.
    """
    cov = np.asarray(cov, dtype=np.float64)
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        bad = next(i for i in range(len(cov)) if np.linalg.eigvalsh(cov[i])[0] <= 0)
        raise ValueError(
            f"covariance at position {first_position + bad} is not positive definite; "
            "increase the regularization"
        ) from None
    return lower_inverse(chol)


def in_chunks(positions: int, chunk: int, work) -> None:
    """Call ``work(start, stop)`` for each run of ``chunk`` positions in ``range(positions)``,
    on up to :func:`os.cpu_count` threads (numpy's LAPACK and batched BLAS calls release the
    GIL, and a batch of small matrices runs each on one core). Each call must touch its own
    positions only: the result is then the same whatever the number of threads. An exception
    is raised for the first failing run in position order."""
    starts = range(0, positions, chunk)
    threads = min(len(starts), os.cpu_count() or 1, 8)
    if threads <= 1:
        for start in starts:
            work(start, min(positions, start + chunk))
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        futures = [pool.submit(work, s, min(positions, s + chunk)) for s in starts]
        for future in futures:
            future.result()


def precision_cholesky_of(
    acc: GaussianAccumulator | PackedGaussian, regularization: float, *, chunk: int = 32
) -> np.ndarray:
    """:func:`precision_cholesky` of an accumulator's regularised covariance, as float32.

    Works ``chunk`` positions at a time, so no full-size float64 covariance is ever built:
    peak memory stays at the accumulator plus the float32 result (and 32 positions' matrices
    stay near the cache: tire's 4,096 factors of 100 x 100 in 0.6-0.7 s against 1.4-1.5 s
    in chunks of 512, the same bits). A :class:`PackedGaussian`'s
    lower triangle is unpacked a chunk at a time, the upper left zero: the Cholesky factor
    reads the lower triangle only, so the factor is the same to the bit as from the whole
    symmetric matrix.
    """
    positions, dim = acc.mean.shape
    if acc.count < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {acc.count}")
    out = np.empty((positions, dim, dim), dtype=np.float32)
    diagonal = np.arange(dim)
    packed = isinstance(acc, PackedGaussian)
    flat = np.ravel_multi_index(np.tril_indices(dim), (dim, dim))

    def work(start: int, stop: int) -> None:
        if packed:
            cov = np.zeros((stop - start, dim * dim), dtype=np.float64)
            cov[:, flat] = acc.scatter_lower[start:stop] / (acc.count - 1)
            cov = cov.reshape(stop - start, dim, dim)
        else:
            cov = acc.scatter[start:stop] / (acc.count - 1)
        cov[:, diagonal, diagonal] += regularization
        out[start:stop] = precision_cholesky(cov, first_position=start)

    in_chunks(positions, chunk, work)
    return out


def mahalanobis(x: np.ndarray, mean: np.ndarray, precision_chol: np.ndarray) -> np.ndarray:
    """``x: (B, P, D)``, ``mean: (P, D)``, ``precision_chol: (P, D, D)`` -> ``(B, P)`` float32
    Mahalanobis distances (one float32 matrix product per position)."""
    centred = (x.astype(np.float32, copy=False) - mean).transpose(1, 0, 2)  # (P, B, D)
    whitened = np.matmul(centred, precision_chol.transpose(0, 2, 1))  # (P, B, D)
    return np.sqrt(np.einsum("pbd,pbd->bp", whitened, whitened))


def gaussian_kernel1d(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian of radius ``ceil(4 sigma)`` (truncated at 4 standard deviations),
    float32."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(np.float32(-0.5) * (x / np.float32(sigma)) ** 2)
    return kernel / kernel.sum()


@functools.lru_cache(maxsize=16)
def resize_blur_matrix(in_size: int, out_size: int, sigma: float) -> np.ndarray:
    """``(out_size, in_size)`` float32 matrix of 1-D linear upsampling followed by Gaussian
    smoothing.

    Both steps are linear and separable, so for a map ``m: (h, w)`` ``A_h @ m @ A_w.T`` equals
    bilinear upsampling (``align_corners=False``, as PyTorch's) to ``(H, W)`` followed by a
    Gaussian blur with reflected borders. Two small matrix products per map replace a
    full-resolution 2-D convolution: about 20x fewer operations for a 64 -> 256 map with
    ``sigma = 4``. Cached and shared: do not modify the result in place.
    """
    # linear interpolation: output j samples the input at (j + 0.5) * in / out - 0.5
    src = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
    low = np.minimum(src.astype(np.int64), in_size - 1)
    high = np.minimum(low + 1, in_size - 1)
    frac = src - low
    upsample = np.zeros((out_size, in_size), dtype=np.float64)
    np.add.at(upsample, (np.arange(out_size), low), 1.0 - frac)
    np.add.at(upsample, (np.arange(out_size), high), frac)
    if sigma <= 0:
        return upsample.astype(np.float32)
    kernel = gaussian_kernel1d(sigma).astype(np.float64)
    radius = len(kernel) // 2
    if radius >= out_size:
        raise ValueError(
            f"sigma={sigma} needs maps larger than {radius} pixels per side, got {out_size}"
        )
    # reflected borders (the edge pixel is not repeated): index -1 reads 1, out reads out - 2
    taps = np.arange(out_size)[:, None] + np.arange(-radius, radius + 1)[None, :]
    taps = np.abs(taps)
    taps = np.where(taps >= out_size, 2 * (out_size - 1) - taps, taps)
    blur = np.zeros((out_size, out_size), dtype=np.float64)
    outputs = np.repeat(np.arange(out_size), len(kernel))
    np.add.at(blur, (outputs, taps.ravel()), np.tile(kernel, out_size))
    return (blur @ upsample).astype(np.float32)


def upsample_maps(patch_scores: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``(B, h, w)`` patch scores -> ``(B, H, W)`` maps with ``rows (H, h)``, ``cols (W, w)``
    from :func:`resize_blur_matrix`."""
    return np.matmul(np.matmul(rows, patch_scores), cols.T)
