"""One image's verdict, written once: the pass/fail rule, the row every predictions table and
the service give for an image, and the colour range of its heatmap (the overlay drawn from a
row is :func:`defectscope.report.visualize.verdict_overlay`). ``predict``, ``serve``,
Ray's predict, evaluation and calibration all judge with :func:`fails`; the operator page
applies the same rule to its slider (torch-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from defectscope.regions import find_regions

#: the rule in words (the page and ``GET /model`` say it)
RULE = "a part fails when its score is above the threshold (score > threshold; equal passes)"


def fails(scores: Any, threshold: float) -> Any:
    """The verdict rule: ``score > threshold``, for one score (a bool) or an array of them.
    Compared in float64: a float32 array against a Python float would otherwise round the
    threshold to float32 (NumPy 2's rule for scalars), and a score between the two roundings
    would get another verdict here than in a comparison of Python floats."""
    out = np.asarray(scores, dtype=np.float64) > threshold
    return bool(out) if out.ndim == 0 else out


def colour_scale_for(
    colour_scale: Sequence[float] | None, maps: np.ndarray, threshold: float
) -> tuple[float, float]:
    """The heatmap colour range: the model's own (fixed at fit, so that equal scores get equal
    colours everywhere), or, for a model without one, the range of ``maps`` up to at least the
    threshold."""
    if colour_scale is not None:
        low, high = colour_scale
        return float(low), float(high)
    return float(np.min(maps)), float(max(np.max(maps), threshold))


def verdict_row(
    score: float,
    normalized: float,
    threshold: float,
    anomaly_map: np.ndarray,
    size: tuple[int, int],
    on_map: bool,
) -> tuple[dict[str, Any], list]:
    """The columns every predictions table and the service give for one image, in order, and
    its regions (those of the map above the threshold, in the image's own ``(width, height)``
    pixels, when the score is the map's maximum; none otherwise)."""
    regions = find_regions(anomaly_map, threshold, size) if on_map else []
    failed = fails(score, threshold)
    row = {
        "score": float(score),
        "normalized_score": round(float(normalized), 4),
        "verdict": "fail" if failed else "pass",
        "is_anomalous": failed,
        "threshold": float(threshold),
        "n_regions": len(regions),
        "regions": [r.to_dict() for r in regions],
    }
    return row, regions
