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


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D bool mask: ``(labels, count)`` with labels 1..count
    (0 = background), numbered in raster order of their first pixel.

    Run-based: the runs of each row are joined to the overlapping (or diagonally touching) runs
    of the row above with a union-find, so the cost grows with the number of runs, not pixels.
    (scipy.ndimage.label gives the same components; importing it costs ~0.4 s, which would
    dominate a one-image predict.)
    """
    mask = np.asarray(mask, dtype=bool)
    height, width = mask.shape
    padded = np.zeros((height, width + 2), dtype=np.int8)
    padded[:, 1:-1] = mask
    edges = np.diff(padded, axis=1)
    starts_r, starts_c = np.nonzero(edges == 1)
    ends_r, ends_c = np.nonzero(edges == -1)  # exclusive ends, same order as the starts
    n = len(starts_r)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    row_first = np.searchsorted(starts_r, np.arange(height + 1))
    for r in range(1, height):
        above = range(row_first[r - 1], row_first[r])
        if not len(above):
            continue
        j = above.start
        for i in range(row_first[r], row_first[r + 1]):
            a, b = starts_c[i], ends_c[i]
            while j < above.stop and ends_c[j] < a:  # ends before this run's left neighbour
                j += 1
            k = j
            while k < above.stop and starts_c[k] <= b:  # starts by this run's right neighbour
                ri, rk = find(i), find(k)
                if ri != rk:
                    parent[max(ri, rk)] = min(ri, rk)
                k += 1
    roots = np.array([find(i) for i in range(n)], dtype=np.int64)
    unique, compact = np.unique(roots, return_inverse=True)
    labels = np.zeros((height, width), dtype=np.int32)
    for i in range(n):
        labels[starts_r[i], starts_c[i] : ends_c[i]] = compact[i] + 1
    return labels, len(unique)


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
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.dtype == np.float32:  # a threshold beyond float32's range: the same answer
        limit32 = float(np.finfo(np.float32).max)
        threshold = min(max(float(threshold), -limit32), limit32)
    above = anomaly_map > threshold
    if not above.any():
        return []
    labels, count = label_components(above)
    flat = labels.ravel()
    inside = flat > 0
    ids = flat[inside] - 1
    values = anomaly_map.ravel()[inside]
    rows, cols = np.divmod(np.flatnonzero(inside), above.shape[1])
    areas = np.bincount(ids, minlength=count)
    peaks = np.full(count, -np.inf)
    np.maximum.at(peaks, ids, values)
    y0 = np.full(count, above.shape[0])
    x0 = np.full(count, above.shape[1])
    y1 = np.zeros(count, dtype=np.int64)
    x1 = np.zeros(count, dtype=np.int64)
    np.minimum.at(y0, ids, rows)
    np.minimum.at(x0, ids, cols)
    np.maximum.at(y1, ids, rows + 1)
    np.maximum.at(x1, ids, cols + 1)
    height, width = above.shape
    sx, sy = (size[0] / width, size[1] / height) if size else (1.0, 1.0)
    order = np.argsort(-peaks, kind="stable")[:limit]
    return [
        Region(
            x0=int(np.floor(x0[i] * sx)),
            y0=int(np.floor(y0[i] * sy)),
            x1=int(np.ceil(x1[i] * sx)),
            y1=int(np.ceil(y1[i] * sy)),
            area=int(round(float(areas[i]) * sx * sy)),
            peak=float(peaks[i]),
        )
        for i in order
    ]
