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
    """``(out_size, in_size)`` matrix of 1-D linear upsampling followed by Gaussian smoothing.

    Both steps are linear and separable, so for a map ``m: (h, w)``
    ``A_h @ m @ A_w.T`` equals bilinear upsampling (``align_corners=False``) to
    ``(H, W)`` followed by :func:`gaussian_blur` (reflected borders). Two small matrix products
    per map replace a full-resolution 2-D convolution: about 20x fewer operations for a
    64 -> 256 map with ``sigma = 4``. Cached: a model asks for the same few matrices for every
    batch. The returned tensor is shared; do not modify it in place.
    """
    identity = torch.eye(in_size, dtype=torch.float64).unsqueeze(1)  # (in, 1, in)
    rows = F.interpolate(identity, size=out_size, mode="linear", align_corners=False)  # (in,1,out)
    if sigma > 0:
        kernel = gaussian_kernel1d(sigma).double()
        radius = kernel.numel() // 2
        if radius >= out_size:
            raise ValueError(
                f"sigma={sigma} needs maps larger than {radius} pixels per side, got {out_size}"
            )
        rows = F.conv1d(F.pad(rows, (radius, radius), mode="reflect"), kernel.view(1, 1, -1))
    return rows.squeeze(1).T.float().contiguous()  # row j of A^T is the image of basis vector j


def resize_blur(maps: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``maps: (B, h, w)`` -> ``(B, H, W)`` with ``rows: (H, h)`` and ``cols: (W, w)`` from
    :func:`resize_blur_matrix`."""
    return torch.matmul(torch.matmul(rows, maps), cols.T)
