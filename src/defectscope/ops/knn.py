"""Nearest-neighbour distances to a memory bank by chunked matrix products (memory bounded)."""

from __future__ import annotations

import torch

#: bank rows compared per matrix product: queries x chunk floats is the largest temporary
BANK_CHUNK = 2048


def nearest(
    queries: torch.Tensor, bank: torch.Tensor, *, chunk: int = BANK_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distance and index of the nearest bank row of every query.

    Args:
        queries: ``(Q, D)``.
        bank: ``(M, D)``.
        chunk: bank rows per product; the largest temporary is ``(Q, chunk)`` whatever ``M``.

    Returns:
        ``distances (Q,)`` and ``indices (Q,)`` int64.

    Squared distances come from ``|q|^2 - 2 q.b + |b|^2`` (one matrix product per chunk),
    clamped at 0 before the square root: rounding can make them slightly negative.
    """
    q2 = queries.pow(2).sum(dim=1, keepdim=True)
    best = None
    index = None
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = q2 - 2.0 * queries @ part.T + part.pow(2).sum(dim=1)
        value, where = d2.min(dim=1)
        where = where + start
        if best is None:
            best, index = value, where
        else:
            better = value < best
            best = torch.where(better, value, best)
            index = torch.where(better, where, index)
    return best.clamp_min(0.0).sqrt(), index


def k_nearest(
    queries: torch.Tensor, bank: torch.Tensor, k: int, *, chunk: int = BANK_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean distances and indices of the ``k`` nearest bank rows of every query.

    Args:
        queries: ``(Q, D)``.
        bank: ``(M, D)`` with ``M >= k``.
        k: neighbours per query.
        chunk: bank rows per product, as for :func:`nearest`.

    Returns:
        ``distances (Q, k)`` ascending and ``indices (Q, k)`` int64. Each chunk's ``k`` best are
        merged with the running ``k`` best, so the largest temporary is ``(Q, chunk + k)``.
    """
    if not 1 <= k <= bank.shape[0]:
        raise ValueError(f"k must be between 1 and the bank size {bank.shape[0]}, got {k}")
    q2 = queries.pow(2).sum(dim=1, keepdim=True)
    best = index = None
    for start in range(0, bank.shape[0], chunk):
        part = bank[start : start + chunk]
        d2 = q2 - 2.0 * queries @ part.T + part.pow(2).sum(dim=1)
        where = torch.arange(start, start + len(part)).expand_as(d2)
        if best is not None:
            d2, where = torch.cat([best, d2], dim=1), torch.cat([index, where], dim=1)
        best, pick = d2.topk(min(k, d2.shape[1]), dim=1, largest=False, sorted=True)
        index = where.gather(1, pick)
    return best.clamp_min(0.0).sqrt(), index
