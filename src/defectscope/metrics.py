"""Image and pixel metrics: AUROC, F1 (best and at a fixed threshold) and AUPRO.

Plain functions on numpy arrays. Every metric sorts the scores once (``O(n log n)``), so pixel
AUROC over 10^7 pixels takes about a second. Ties are handled exactly: tied scores move the
curve in one step, as in scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _check(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in size: {labels.size} vs {scores.size}")
    return labels, scores


def _cumulative(labels: np.ndarray, scores: np.ndarray):
    """True and false positives when thresholding at each distinct score, highest first.

    Returns ``(tps, fps, thresholds)``; predicting ``score >= thresholds[i]`` gives ``tps[i]``
    true and ``fps[i]`` false positives.
    """
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    hits = labels[order]
    distinct = (
        np.flatnonzero(np.diff(sorted_scores)) if sorted_scores.size > 1 else np.array([], int)
    )
    ends = np.r_[distinct, hits.size - 1]
    tps = np.cumsum(hits, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    return tps, fps, sorted_scores[ends]


def trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Area under ``y(x)`` by the trapezoidal rule (``np.trapezoid`` exists only in NumPy 2)."""
    y, x = np.asarray(y, dtype=np.float64), np.asarray(x, dtype=np.float64)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1])) / 2.0)


@dataclass(frozen=True)
class RocSummary:
    """The ROC curve with its area and the best F1 along it, from one sort of the scores."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    auroc: float
    best_f1: float
    best_threshold: float


def roc_summary(labels, scores) -> RocSummary:
    """ROC curve from (0, 0) to (1, 1), its area, and the best F1 over all thresholds.

    Pixel metrics sort 10^7 scores; computing AUROC and best F1 from the same cumulative counts
    sorts them once instead of twice. Needs both classes.
    """
    labels, scores = _check(labels, scores)
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise ValueError("ROC needs both good and anomalous samples")
    tps, fps, thresholds = _cumulative(labels, scores)
    fpr = np.r_[0.0, fps / negatives]
    tpr = np.r_[0.0, tps / positives]
    f1 = 2 * tps / (positives + tps + fps)
    best = int(np.argmax(f1))
    return RocSummary(
        fpr=fpr,
        tpr=tpr,
        thresholds=np.r_[np.inf, thresholds],
        auroc=trapezoid(tpr, fpr),
        best_f1=float(f1[best]),
        best_threshold=float(thresholds[best]),
    )


def roc_curve(labels, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0) to (1, 1). Needs both classes."""
    summary = roc_summary(labels, scores)
    return summary.fpr, summary.tpr, summary.thresholds


def auroc(labels, scores) -> float:
    """Area under the ROC curve (trapezoidal, exact with ties)."""
    return roc_summary(labels, scores).auroc


def best_f1(labels, scores) -> tuple[float, float]:
    """Best F1 over all thresholds and the threshold reaching it: ``(f1, threshold)``.

    This is what anomalib reports; it picks the threshold on the test labels and so is
    optimistic. Prediction is ``score >= threshold``.
    """
    labels, scores = _check(labels, scores)
    positives = int(labels.sum())
    if positives == 0:
        raise ValueError("F1 needs at least one anomalous sample")
    tps, fps, thresholds = _cumulative(labels, scores)
    f1 = 2 * tps / (positives + tps + fps)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


def f1_at(labels, scores, threshold: float) -> float:
    """F1 when predicting anomalous for ``score > threshold`` (the pass/fail rule of predict)."""
    labels, scores = _check(labels, scores)
    predicted = scores > threshold
    tp = int(np.sum(predicted & labels))
    denominator = int(labels.sum()) + int(predicted.sum())
    return 2 * tp / denominator if denominator else 0.0


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-region overlap against false positive rate, at every distinct threshold.

    Args:
        masks: ``(N, H, W)`` bool ground truth; each 8-connected component is one region.
        maps: ``(N, H, W)`` anomaly scores.

    Returns:
        ``(fpr, pro)``, both increasing from 0: ``fpr`` is the fraction of good pixels at or above
        the threshold, ``pro`` the mean over regions of the fraction of the region at or above it.
    """
    masks = np.asarray(masks, dtype=bool)
    maps = np.asarray(maps)
    if masks.shape != maps.shape:
        raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
    structure = np.ones((3, 3), dtype=bool)
    weights = np.zeros(masks.shape, dtype=np.float64)
    n_regions = 0
    for i in range(masks.shape[0]):
        labelled, count = ndimage.label(masks[i], structure=structure)
        if count:
            sizes = np.bincount(labelled.ravel())
            region = labelled > 0
            weights[i][region] = 1.0 / sizes[labelled[region]]
            n_regions += count
    good = ~masks
    if n_regions == 0 or not good.any():
        raise ValueError("PRO needs at least one defect region and some good pixels")
    scores = maps.ravel()
    order = np.argsort(scores, kind="stable")[::-1]
    sorted_scores = scores[order]
    fp_steps = good.ravel()[order] / good.sum()
    pro_steps = weights.ravel()[order] / n_regions
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    fpr = np.r_[0.0, np.cumsum(fp_steps)[ends]]
    pro = np.r_[0.0, np.cumsum(pro_steps)[ends]]
    return fpr, pro


def area_under_pro(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under a :func:`pro_curve` up to ``fpr_limit``, divided by ``fpr_limit``."""
    cut = np.searchsorted(fpr, fpr_limit, side="right")
    x = np.r_[fpr[:cut], fpr_limit]
    y = np.r_[pro[:cut], np.interp(fpr_limit, fpr, pro)]
    return trapezoid(y, x) / fpr_limit


def aupro(masks: np.ndarray, maps: np.ndarray, fpr_limit: float = 0.3) -> float:
    """Area under the PRO curve up to ``fpr_limit``, divided by ``fpr_limit`` (1.0 is perfect)."""
    return area_under_pro(*pro_curve(masks, maps), fpr_limit)


def thin_curve(x: np.ndarray, y: np.ndarray, points: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """At most ``points`` evenly spaced points of a curve, both ends kept (for plotting and
    storing: pixel curves have millions of points)."""
    if x.size <= points:
        return x, y
    keep = np.unique(np.linspace(0, x.size - 1, points).astype(int))
    return x[keep], y[keep]
