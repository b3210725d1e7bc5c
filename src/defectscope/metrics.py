"""Image and pixel metrics: AUROC, F1 (best and at a fixed threshold) and AUPRO.

Plain functions on numpy arrays. Every metric sorts the scores once (``O(n log n)``), so pixel
AUROC over 10^7 pixels takes about a second. Ties are handled exactly: tied scores move the
curve in one step, as in scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defectscope.verdict import fails


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
    predicted = fails(scores, threshold)
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
    from scipy import ndimage  # lazily: importing it costs ~0.4 s

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


#: float32 bits dropped by :class:`PixelAccumulator` by default: bins of relative width 2^-15
#: (3e-5); 0 keeps every distinct float32 value (exact, memory growing with the distinct values)
DEFAULT_DROP_BITS = 8


def float_keys(values: np.ndarray, drop_bits: int = DEFAULT_DROP_BITS) -> np.ndarray:
    """Order-preserving integer keys of float32 values: equal keys for values that differ only in
    their last ``drop_bits`` mantissa bits (a bin of relative width ``2**(drop_bits - 23)``)."""
    values = np.ascontiguousarray(values, dtype=np.float32) + np.float32(0)  # -0.0 -> 0.0
    bits = values.view(np.uint32)
    negative = (bits & np.uint32(0x80000000)) != 0
    ordered = np.where(negative, ~bits, bits | np.uint32(0x80000000))
    return (ordered >> np.uint32(drop_bits)).astype(np.int64)


#: a batch's keys spanning fewer than this many values are counted by position, not sorted
DENSE_KEYS = 1 << 20


class SparseHistogram:
    """Counts (or weights) per key, for keys seen so far: memory grows with the distinct keys,
    which for binned scores is bounded by the score range, not by the number of pixels."""

    def __init__(self) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        self.counts = np.empty(0, dtype=np.float64)

    def add(self, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
        if keys.size == 0:
            return
        keys = keys.ravel()
        weights = None if weights is None else weights.ravel()
        low, high = int(keys.min()), int(keys.max())
        if high - low < max(DENSE_KEYS, 2 * keys.size):
            # keys within a short range (binned scores of one batch): counted in one pass by
            # position instead of sorted (the same sums, added in the same order)
            offsets = keys - low
            counts = np.bincount(offsets, weights=weights, minlength=high - low + 1)
            seen = counts if weights is None else np.bincount(offsets, minlength=high - low + 1)
            present = np.flatnonzero(seen)
            unique, counts = present + low, counts[present]
        else:
            unique, inverse = np.unique(keys, return_inverse=True)
            counts = np.bincount(inverse, weights=weights)
        merged = np.union1d(self.keys, unique)
        total = np.zeros(len(merged), dtype=np.float64)
        total[np.searchsorted(merged, self.keys)] += self.counts
        total[np.searchsorted(merged, unique)] += counts
        self.keys, self.counts = merged, total

    def on(self, keys: np.ndarray) -> np.ndarray:
        """The counts of this histogram at ``keys`` (a sorted superset of its own keys)."""
        out = np.zeros(len(keys), dtype=np.float64)
        out[np.searchsorted(keys, self.keys)] = self.counts
        return out


@dataclass(frozen=True)
class PixelMetrics:
    """Pixel metrics from a :class:`PixelAccumulator`; ``auroc_bound`` bounds the AUROC's error
    against the exact computation (0 when nothing was binned together)."""

    auroc: float | None
    best_f1: float | None
    f1_fixed: float | None
    aupro: float | None
    auroc_bound: float
    roc: tuple[np.ndarray, np.ndarray] | None
    pro: tuple[np.ndarray, np.ndarray] | None


class PixelAccumulator:
    """Pixel AUROC, best F1, F1 at a fixed threshold and AUPRO, accumulated batch by batch:
    memory does not grow with the number of images.

    Scores are grouped by :func:`float_keys` (``drop_bits=0``: exact float32 values, the same
    numbers as :func:`roc_summary` and :func:`pro_curve`). With binning, pixels in one bin count
    as tied; the AUROC then differs from the exact one by at most :attr:`PixelMetrics.auroc_bound`
    (half the fraction of good/defect pixel pairs that share a bin), which the result reports.
    F1 at the fixed threshold is always exact; the best F1 and AUPRO are evaluated at bin edges.
    """

    def __init__(self, threshold: float, drop_bits: int = DEFAULT_DROP_BITS) -> None:
        self.threshold = threshold
        self.drop_bits = drop_bits
        self.good, self.defect, self.overlap = (
            SparseHistogram(),
            SparseHistogram(),
            SparseHistogram(),
        )
        self.regions = 0
        self.tp = self.predicted = self.positives = 0

    def update(self, maps: np.ndarray, masks: np.ndarray) -> None:
        """Add ``maps (B, H, W)`` with their ``masks (B, H, W)`` (bool, True = defect pixel)."""
        maps = np.asarray(maps, dtype=np.float32)
        masks = np.asarray(masks, dtype=bool)
        if maps.shape != masks.shape:
            raise ValueError(f"masks {masks.shape} and maps {maps.shape} differ in shape")
        from scipy import ndimage  # lazily: importing it costs ~0.4 s

        keys = float_keys(maps, self.drop_bits)
        self.good.add(keys[~masks])
        self.defect.add(keys[masks])
        structure = np.ones((3, 3), dtype=bool)
        for i in range(len(maps)):
            if not masks[i].any():
                continue
            labelled, count = ndimage.label(masks[i], structure=structure)
            sizes = np.bincount(labelled.ravel())
            region = labelled > 0
            self.overlap.add(keys[i][region], 1.0 / sizes[labelled[region]])
            self.regions += count
        predicted = maps > self.threshold
        self.tp += int(np.sum(predicted & masks))
        self.predicted += int(predicted.sum())
        self.positives += int(masks.sum())

    def result(self, fpr_limit: float = 0.3) -> PixelMetrics:
        denominator = self.positives + self.predicted
        f1_fixed = 2 * self.tp / denominator if self.positives else None
        n_good, n_defect = self.good.counts.sum(), self.defect.counts.sum()
        if not n_good or not n_defect:
            return PixelMetrics(None, None, f1_fixed, None, 0.0, None, None)
        keys = np.union1d(self.good.keys, self.defect.keys)[::-1]  # highest scores first
        good = self.good.on(keys[::-1])[::-1]
        defect = self.defect.on(keys[::-1])[::-1]
        tps, fps = np.cumsum(defect), np.cumsum(good)
        fpr, tpr = np.r_[0.0, fps / n_good], np.r_[0.0, tps / n_defect]
        f1 = 2 * tps / (n_defect + tps + fps)
        bound = 0.5 * float(np.sum(good * defect)) / (n_good * n_defect) if self.drop_bits else 0.0
        overlap = self.overlap.on(keys[::-1])[::-1]
        pro = np.r_[0.0, np.cumsum(overlap) / self.regions] if self.regions else None
        return PixelMetrics(
            auroc=trapezoid(tpr, fpr),
            best_f1=float(f1.max()),
            f1_fixed=f1_fixed,
            aupro=area_under_pro(fpr, pro, fpr_limit) if pro is not None else None,
            auroc_bound=bound,
            roc=(fpr, tpr),
            pro=(fpr, pro) if pro is not None else None,
        )
