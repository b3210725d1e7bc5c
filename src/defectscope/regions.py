"""Defect regions: connected components of an anomaly map above a threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

#: at most this many regions are reported per image (the highest peaks first)
MAX_REGIONS = 20


@dataclass(frozen=True)
class Region:
    """One connected area of the map above the threshold, in the coordinates of the image it is
    given for: the box ``[x0, x1) x [y0, y1)`` in pixels, its area in pixels and its peak score."""

    x0: int
    y0: int
    x1: int
    y1: int
    area: int
    peak: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def find_regions(
    anomaly_map: np.ndarray,
    threshold: float,
    size: tuple[int, int] | None = None,
    *,
    limit: int = MAX_REGIONS,
) -> list[Region]:
    """Connected components (8-connected) of ``anomaly_map > threshold``, highest peak first.

    Args:
        anomaly_map: ``(H, W)`` per-pixel scores at the model's input size.
        threshold: the image threshold (a pixel above it is, alone, enough to fail the image
            when the image score is the map's maximum).
        size: ``(width, height)`` of the original image: boxes and areas are scaled to it.
        limit: keep at most this many regions.
    """
    from scipy import ndimage

    above = np.asarray(anomaly_map) > threshold
    if not above.any():
        return []
    labels, count = ndimage.label(above, structure=np.ones((3, 3), dtype=bool))
    index = np.arange(1, count + 1)
    peaks = ndimage.maximum(anomaly_map, labels, index)
    areas = ndimage.sum_labels(above, labels, index)
    boxes = ndimage.find_objects(labels)
    height, width = above.shape
    sx, sy = (size[0] / width, size[1] / height) if size else (1.0, 1.0)
    order = np.argsort(-np.asarray(peaks), kind="stable")[:limit]
    return [
        Region(
            x0=int(np.floor(boxes[i][1].start * sx)),
            y0=int(np.floor(boxes[i][0].start * sy)),
            x1=int(np.ceil(boxes[i][1].stop * sx)),
            y1=int(np.ceil(boxes[i][0].stop * sy)),
            area=int(round(float(areas[i]) * sx * sy)),
            peak=float(peaks[i]),
        )
        for i in order
    ]
