"""Separable Gaussian smoothing of anomaly maps."""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian of radius ``ceil(4 sigma)`` (truncated at 4 standard deviations)."""
    radius = max(1, math.ceil(4.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``maps: (B, H, W)`` with a Gaussian of ``sigma`` pixels -> ``(B, H, W)``.

    Two 1-D passes (rows, then columns) cost ``2k`` instead of ``k^2`` multiplications per pixel;
    borders are reflected so that an anomaly at the edge is not dimmed. ``sigma <= 0`` returns
    the input unchanged.
    """
    if sigma <= 0:
        return maps
    kernel = gaussian_kernel1d(sigma).to(maps.dtype)
    radius = kernel.numel() // 2
    x = maps.unsqueeze(1)
    if radius >= min(x.shape[-2:]):
        raise ValueError(
            f"sigma={sigma} needs maps larger than {radius} pixels per side, "
            f"got {tuple(x.shape[-2:])}"
        )
    x = F.pad(x, (radius, radius, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, -1, 1))
    return x.squeeze(1)


@functools.lru_cache(maxsize=16)
def resize_blur_matrix(in_size: int, out_size: int, sigma: float) -> torch.Tensor:
    """:func:`defectscope.ops.moments.resize_blur_matrix` as a tensor (shared, cached: do not
    modify it in place)."""
    from defectscope.ops import moments

    return torch.from_numpy(moments.resize_blur_matrix(in_size, out_size, sigma))


def resize_blur(maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``maps: (B, h, w)`` -> ``(B, H, W)`` with ``rows: (H, h)`` and ``cols: (W, w)`` from
    :func:`resize_blur_matrix`."""
    return torch.matmul(torch.matmul(rows, maps), cols.T)
