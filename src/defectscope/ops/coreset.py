"""Greedy k-center coreset selection (Sener & Savarese 2018; PatchCore, Roth et al. 2022).

Greedy k-center picks, again and again, the point farthest from everything chosen so far; the
chosen set covers every point within the final radius, and that radius is at most twice the
best possible (a 2-approximation). Like the paper, distances are taken on a random projection
of the features (``projection_dim`` dimensions; Johnson-Lindenstrauss keeps them close).

The textbook loop updates every point's distance after every pick: ``k`` passes over all ``N``
points, memory-bound (512k x 128 floats = 262 MB read per pick). :func:`greedy_coreset` gives
the same selection with one matrix-vector product and in-place updates per pick.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Coreset:
    """A greedy k-center selection.

    Attributes:
        indices: ``(k,)`` int64 indices into the input, in the order they were picked.
        radius: the largest distance (in the projected space) of any input point to its nearest
            selected point: every point is covered within it.
        projection: ``(D, d)`` the random projection used (identity-sized when ``d >= D``).
    """

    indices: np.ndarray
    radius: float
    projection: np.ndarray


def random_projection(dim: int, projection_dim: int, seed: int) -> np.ndarray:
    """``(dim, projection_dim)`` float32 Gaussian matrix scaled by ``1/sqrt(projection_dim)``;
    the identity when ``projection_dim >= dim`` (nothing to gain from projecting)."""
    if projection_dim <= 0 or projection_dim >= dim:
        return np.eye(dim, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return rng.standard_normal((dim, projection_dim), dtype=np.float32) / np.float32(
        math.sqrt(projection_dim)
    )


def first_pick(n: int, seed: int) -> int:
    """The seeded first centre of a selection over ``n`` points."""
    return int(np.random.default_rng([seed, 1]).integers(n))


def greedy_coreset_reference(
    x: np.ndarray, k: int, *, projection_dim: int = 128, seed: int = 0
) -> Coreset:
    """The textbook greedy k-center: every point updated after every pick. ``x: (N, D)``.

    Kept as the reference that :func:`greedy_coreset` is tested against.
    """
    x = np.asarray(x)
    projection = random_projection(x.shape[1], projection_dim, seed)
    z = project(x, projection)
    n = len(z)
    k = min(k, n)
    min_dist = np.full(n, np.inf, dtype=np.float32)
    chosen = [first_pick(n, seed)]
    for _ in range(k):
        dist = np.linalg.norm(z - z[chosen[-1]], axis=1)
        np.minimum(min_dist, dist, out=min_dist)
        if len(chosen) == k:
            break
        chosen.append(int(min_dist.argmax()))
    return Coreset(np.asarray(chosen, dtype=np.int64), float(min_dist.max()), projection)


def greedy_coreset(
    x: np.ndarray,
    k: int,
    *,
    projection_dim: int = 128,
    seed: int = 0,
    on_pick: Callable[[int, int], None] | None = None,
) -> Coreset:
    """Greedy k-center over ``x: (N, D)``, exact: the selection of
    :func:`greedy_coreset_reference` with the same arguments (ties aside), several times faster.

    Each pick costs one matrix-vector product over the projected points
    (``|z|^2 - 2 z.c + |c|^2``, squared distances, ``|z|^2`` computed once) and two in-place
    passes over ``N`` floats, all into preallocated buffers: no temporary of ``N x d`` is made
    per pick, and the loop is bound by memory bandwidth (``N d`` floats read per pick). What
    was tried and did not pay off on real patch features (skipping blocks or clusters by the
    triangle inequality) is in ``benchmarks/README.md``.

    Args:
        x: the points (an array, or anything ``np.asarray`` takes).
        k: how many to select (at most ``N``).
        projection_dim: dimensions of the random projection distances are measured in; fewer
            is proportionally faster (see the study in ``benchmarks/README.md``).
        seed: seed of the projection and of the first pick.
        on_pick: called as ``on_pick(done, k)`` about a hundred times during the selection
            (for a progress line that counts picks).
    """
    x = np.asarray(x)
    projection = random_projection(x.shape[1], projection_dim, seed)
    indices, radius = greedy_projected(project(x, projection), k, seed=seed, on_pick=on_pick)
    return Coreset(indices, radius, projection)


def greedy_projected(
    z: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    on_pick: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, float]:
    """The loop of :func:`greedy_coreset` on points already projected (``z: (N, d)`` float32,
    read in place): ``(indices (k,) in pick order, radius)``. A caller that keeps only the
    projections of its points (see ``models.patchcore.lean.ExactPool``) selects with this and
    gets the selection :func:`greedy_coreset` makes from the points themselves."""
    n = len(z)
    k = min(k, n)
    first = first_pick(n, seed)
    sq = np.einsum("ij,ij->i", z, z)
    min_d2 = sq - 2.0 * (z @ z[first]) + sq[first]
    buffer = np.empty_like(min_d2)
    chosen = [first]
    every = max(1, k // 100)
    for done in range(1, k):
        if on_pick is not None and done % every == 0:
            on_pick(done, k)
        pick = int(min_d2.argmax())
        chosen.append(pick)
        np.matmul(z, z[pick], out=buffer)
        buffer *= -2.0
        buffer += sq
        buffer += sq[pick]
        np.minimum(min_d2, buffer, out=min_d2)
    radius = float(np.sqrt(max(float(min_d2.max()), 0.0)))
    return np.asarray(chosen, dtype=np.int64), radius


def project(x: np.ndarray, projection: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """``x @ projection`` in float32, chunk by chunk (``x`` may be float16 or larger)."""
    out = np.empty((len(x), projection.shape[1]), dtype=np.float32)
    for start in range(0, len(x), chunk):
        # no copy of a float32 chunk (astype copies by default: 40 MB per 65,536 rows of 152)
        out[start : start + chunk] = (
            x[start : start + chunk].astype(np.float32, copy=False) @ projection
        )
    return out


def covering_radius(x: np.ndarray, coreset: Coreset, chunk: int = 16384) -> float:
    """The largest projected distance of any row of ``x`` to its nearest selected row
    (recomputed from scratch: what tests check the reported radius against)."""
    z = project(np.asarray(x), coreset.projection).astype(np.float64)
    centres = z[coreset.indices]
    worst = 0.0
    for start in range(0, len(z), chunk):
        part = z[start : start + chunk]
        d2 = (part**2).sum(1)[:, None] - 2 * part @ centres.T + (centres**2).sum(1)
        worst = max(worst, float(np.sqrt(max(float(d2.min(axis=1).max()), 0.0))))
    return worst
