"""The Mahalanobis distance in PyTorch (inside exportable modules), vectorised over positions;
the statistics it needs come from :mod:`defectscope.ops.moments` (numpy)."""

from __future__ import annotations

import torch


def mahalanobis(x: torch.Tensor, mean: torch.Tensor, precision_chol: torch.Tensor) -> torch.Tensor:
    """Mahalanobis distance of every sample at every position.

    Args:
        x: ``(B, P, D)`` samples.
        mean: ``(P, D)`` per-position means.
        precision_chol: ``(P, D, D)`` inverse lower Cholesky factors (:func:`precision_cholesky`).

    Returns:
        ``(B, P)`` distances, in the dtype of ``precision_chol`` (float32 for scoring: the
        factor is precomputed in float64, and one float32 matrix product per position keeps
        about 6 significant digits, far more than a ranking needs).
    """
    centred = (x.to(precision_chol.dtype) - mean.to(precision_chol.dtype)).transpose(0, 1)
    whitened = torch.bmm(centred, precision_chol.transpose(1, 2))  # (P, B, D)
    return torch.linalg.vector_norm(whitened, dim=-1).transpose(0, 1)


def pack_lower(matrices: torch.Tensor) -> torch.Tensor:
    """Lower triangles of ``(P, D, D)`` matrices as ``(P, D (D + 1) / 2)``: half the bytes."""
    rows, cols = torch.tril_indices(matrices.shape[-1], matrices.shape[-1])
    return matrices[:, rows, cols].contiguous()


def unpack_lower(packed: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`pack_lower`: ``(P, D (D + 1) / 2) -> (P, D, D)``, zeros above."""
    rows, cols = torch.tril_indices(dim, dim)
    out = packed.new_zeros(packed.shape[0], dim, dim)
    out[:, rows, cols] = packed
    return out
