"""Per-position Gaussian statistics and the Mahalanobis distance, vectorised over positions."""

from __future__ import annotations

import torch


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

    def __init__(self, positions: int, dim: int, *, chunk_bytes: int = 32 << 20) -> None:
        self.count = 0
        self.mean = torch.zeros(positions, dim, dtype=torch.float64)
        self.scatter = torch.zeros(positions, dim, dim, dtype=torch.float64)
        self._chunk_bytes = chunk_bytes

    def update(self, x: torch.Tensor) -> None:
        """Add samples ``x: (B, P, D)`` (one ``D``-vector per position and sample)."""
        batch, positions, dim = x.shape
        if (positions, dim) != tuple(self.mean.shape):
            raise ValueError(
                f"expected samples of shape (B, {self.mean.shape[0]}, {self.mean.shape[1]}), "
                f"got {tuple(x.shape)}"
            )
        x = x.float()
        batch_mean = x.mean(dim=0)  # (P, D)
        total = self.count + batch
        delta = batch_mean.double() - self.mean  # (P, D)
        # The batch scatter is P matrices of D x D; chunk the positions so the float32
        # temporary stays under chunk_bytes (wide_resnet50_2 has D = 550). Both additions are
        # in place into the float64 sums: no float64 temporary of the scatter's size is made.
        step = max(1, self._chunk_bytes // (4 * dim * dim))
        weight = self.count * batch / total
        for start in range(0, positions, step):
            stop = min(positions, start + step)
            centred = (x[:, start:stop] - batch_mean[start:stop]).transpose(0, 1)  # (p, B, D)
            self.scatter[start:stop].add_(torch.bmm(centred.transpose(1, 2), centred))
            d = delta[start:stop]
            self.scatter[start:stop].baddbmm_(d.unsqueeze(2), d.unsqueeze(1), alpha=weight)
        self.mean += delta * (batch / total)
        self.count = total

    def merge(self, other: GaussianAccumulator) -> None:
        """Add the samples summarised by ``other`` (Chan et al.'s pairwise merge, float64)."""
        if other.mean.shape != self.mean.shape:
            raise ValueError(
                f"cannot merge accumulators of shapes {tuple(other.mean.shape)} and "
                f"{tuple(self.mean.shape)}"
            )
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        weight = self.count * other.count / total
        self.scatter += other.scatter
        self.scatter.baddbmm_(delta.unsqueeze(2), delta.unsqueeze(1), alpha=weight)
        self.mean += delta * (other.count / total)
        self.count = total

    def state(self) -> dict[str, torch.Tensor | int]:
        """The statistics as plain values (the scatter's lower triangle only: it is symmetric),
        e.g. to send to another process; :meth:`from_state` rebuilds the accumulator."""
        rows, cols = torch.tril_indices(self.mean.shape[1], self.mean.shape[1])
        return {
            "count": self.count,
            "mean": self.mean,
            "scatter_lower": self.scatter[:, rows, cols].contiguous(),
        }

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor | int]) -> GaussianAccumulator:
        mean = state["mean"]
        positions, dim = mean.shape
        out = cls(positions, dim)
        rows, cols = torch.tril_indices(dim, dim)
        out.scatter[:, rows, cols] = state["scatter_lower"]
        out.scatter[:, cols, rows] = state["scatter_lower"]
        out.mean.copy_(mean)
        out.count = int(state["count"])
        return out

    def covariance(self, regularization: float) -> torch.Tensor:
        """Unbiased covariance plus ``regularization * I``: ``(P, D, D)`` float64."""
        if self.count < 2:
            raise ValueError(f"need at least 2 samples for a covariance, got {self.count}")
        cov = self.scatter / (self.count - 1)
        cov.diagonal(dim1=1, dim2=2).add_(regularization)
        return cov


def precision_cholesky_of(
    acc: GaussianAccumulator, regularization: float, *, chunk: int = 128
) -> torch.Tensor:
    """:func:`precision_cholesky` of an accumulator's regularised covariance, as float32.

    Works ``chunk`` positions at a time, so no full-size float64 covariance is ever built:
    peak memory stays at the accumulator plus the float32 result.
    """
    positions, dim = acc.mean.shape
    out = torch.empty(positions, dim, dim, dtype=torch.float32)
    for start in range(0, positions, chunk):
        stop = min(positions, start + chunk)
        cov = acc.scatter[start:stop] / (acc.count - 1)
        cov.diagonal(dim1=1, dim2=2).add_(regularization)
        out[start:stop] = precision_cholesky(cov, first_position=start)
    return out


def precision_cholesky(cov: torch.Tensor, *, first_position: int = 0) -> torch.Tensor:
    """Inverse of the lower Cholesky factor of each covariance: ``(P, D, D) -> (P, D, D)``.

    With ``cov = L L^T`` and ``W = L^{-1}``, the squared Mahalanobis distance is
    ``|W (x - mean)|^2``: a sum of squares, never negative, unlike ``x^T cov^{-1} x`` in
    floating point. Computed in float64; ``first_position`` only numbers positions in errors.
    """
    chol, info = torch.linalg.cholesky_ex(cov.double())
    if int(info.max()) > 0:
        bad = first_position + int((info > 0).nonzero()[0])
        raise ValueError(
            f"covariance at position {bad} is not positive definite; increase the regularization"
        )
    eye = torch.eye(cov.shape[-1], dtype=torch.float64).expand_as(chol)
    return torch.linalg.solve_triangular(chol, eye, upper=False)


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
