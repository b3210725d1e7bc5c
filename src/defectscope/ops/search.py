"""Nearest-neighbour distances to a memory bank in numpy (torch-free; the PyTorch version for
exportable modules is :mod:`defectscope.ops.knn`)."""

from __future__ import annotations

import numpy as np

#: bank rows compared per matrix product: queries x chunk floats is the largest temporary
BANK_CHUNK = 2048


def nearest(
    queries: np.ndarray, bank: np.ndarray, *, chunk: int = BANK_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance ``(Q,)`` and index ``(Q,)`` of the nearest ``bank (M, D)`` row of
    every ``queries (Q, D)`` row; chunked as :func:`defectscope.ops.knn.nearest` (squared
    distances ``|q|^2 - 2 q.b + |b|^2`` clamped at 0 before the square root)."""
    q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
    best = index = None
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        d2 = q2 - 2.0 * (queries @ part.T) + np.einsum("ij,ij->i", part, part)
        where = d2.argmin(axis=1)
        value = np.take_along_axis(d2, where[:, None], axis=1)[:, 0]
        where += start
        if best is None:
            best, index = value, where
        else:
            better = value < best
            best = np.where(better, value, best)
            index = np.where(better, where, index)
    return np.sqrt(np.maximum(best, 0.0)), index
