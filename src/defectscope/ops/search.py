"""Nearest-neighbour distances to a memory bank in numpy (torch-free; the PyTorch version for
exportable modules is :mod:`defectscope.ops.knn`)."""

from __future__ import annotations

import numpy as np

#: bank rows compared per matrix product: queries x chunk floats is the largest temporary
BANK_CHUNK = 2048


def nearest_distance(
    queries: np.ndarray, bank: np.ndarray, *, chunk: int = BANK_CHUNK
) -> np.ndarray:
    """Euclidean distance ``(Q,)`` from every ``queries (Q, D)`` row to its nearest ``bank (M, D)``
    row, chunked as :func:`defectscope.ops.knn.nearest` (squared distances
    ``|q|^2 - 2 q.b + |b|^2`` formed in place in one ``(Q, chunk)`` buffer, clamped at 0 before
    the square root). No index: the lean path does not need one, and finding it costs a second
    pass over every chunk."""
    q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
    best = None
    d2 = np.empty((len(queries), min(chunk, len(bank))), dtype=np.float32)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        out = d2[:, : len(part)]
        np.matmul(queries, part.T, out=out)
        out *= -2.0
        out += q2
        out += np.einsum("ij,ij->i", part, part)
        value = out.min(axis=1)
        best = value if best is None else np.minimum(best, value, out=best)
    return np.sqrt(np.maximum(best, 0.0))
