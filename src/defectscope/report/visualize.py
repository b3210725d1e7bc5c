"""Heatmap colouring and overlays as plain arrays (no pyplot state), written as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

CMAP = "jet"


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float, cmap: str = CMAP) -> np.ndarray:
    """``(H, W)`` scores -> ``(H, W, 3)`` uint8 colours on the fixed scale ``[vmin, vmax]``."""
    span = max(vmax - vmin, 1e-12)
    unit = np.clip((anomaly_map - vmin) / span, 0.0, 1.0)
    return (colormaps[cmap](unit)[..., :3] * 255).astype(np.uint8)


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45
) -> np.ndarray:
    """Blend the coloured map over ``image (H, W, 3) uint8``; the map is resized to the image."""
    if anomaly_map.shape != image.shape[:2]:
        resized = Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(
            (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
        )
        anomaly_map = np.asarray(resized)
    heat = colorize(anomaly_map, vmin, vmax).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + heat * alpha).astype(np.uint8)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool -> white-on-black ``(H, W, 3)`` uint8."""
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path
