"""Evaluating a fitted detector on a category's test split, and benchmarking many categories."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectscope import metrics
from defectscope.data.images import load_mask
from defectscope.data.mvtec import Category, load_category
from defectscope.errors import DataError
from defectscope.models.base import Detector

log = logging.getLogger(__name__)

METRICS = (
    "image_auroc",
    "image_f1_best",
    "image_f1_fixed",
    "pixel_auroc",
    "pixel_f1_best",
    "pixel_f1_fixed",
    "aupro_30",
    "image_accuracy_fixed",
)
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "image_f1_best": "image F1 (best threshold on test, optimistic)",
    "image_f1_fixed": "image F1 (threshold fitted without test labels)",
    "pixel_auroc": "pixel AUROC",
    "pixel_f1_best": "pixel F1 (best threshold on test, optimistic)",
    "pixel_f1_fixed": "pixel F1 (threshold fitted without test labels)",
    "aupro_30": "AUPRO up to FPR 0.3",
    "image_accuracy_fixed": "image accuracy (threshold fitted without test labels)",
}


@dataclass(frozen=True)
class ImageResult:
    """One test image's outcome."""

    path: str
    defect_type: str
    is_anomalous: bool
    score: float
    predicted_anomalous: bool


@dataclass
class CategoryResult:
    """Metrics and per-image outcomes of one detector on one category.

    ``metrics`` maps each name in :data:`METRICS` to a float, or None where it cannot be computed
    (pixel metrics without masks); ``notices`` says why. ``maps`` (N, S, S), ``masks``
    (N, S, S) or None, and ``curves`` (thinned ``(x, y)`` of ``image_roc``, ``pixel_roc`` and
    ``pro``) are kept in memory for the figures and are not serialised.
    """

    category: str
    detector: str
    metrics: dict[str, float | None]
    threshold: float
    images: list[ImageResult]
    notices: list[str] = field(default_factory=list)
    fit_seconds: float | None = None
    evaluate_seconds: float | None = None
    n_train: int | None = None
    maps: np.ndarray | None = field(default=None, repr=False)
    masks: np.ndarray | None = field(default=None, repr=False)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        skip = ("maps", "masks", "curves", "images")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["n_test"] = len(self.images)
        out["images"] = [asdict(r) for r in self.images]
        return out


@dataclass(frozen=True)
class MetricSet:
    """Metric values (every name in :data:`METRICS`, None where the inputs do not allow it)
    and the curves they came from, thinned for plotting."""

    values: dict[str, float | None]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def compute_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
) -> MetricSet:
    """Every metric in :data:`METRICS` that the inputs allow, each curve sorted once."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out["image_accuracy_fixed"] = float(np.mean((scores > threshold) == labels))
    if labels.any() and not labels.all():
        roc = metrics.roc_summary(labels, scores)
        out["image_auroc"], out["image_f1_best"] = roc.auroc, roc.best_f1
        curves["image_roc"] = (roc.fpr, roc.tpr)
    elif labels.any():
        out["image_f1_best"] = metrics.best_f1(labels, scores)[0]
    if labels.any():
        out["image_f1_fixed"] = metrics.f1_at(labels, scores, threshold)
    if masks is not None and masks.any() and not masks.all():
        roc = metrics.roc_summary(masks, maps)
        out["pixel_auroc"], out["pixel_f1_best"] = roc.auroc, roc.best_f1
        curves["pixel_roc"] = metrics.thin_curve(roc.fpr, roc.tpr)
        del roc  # the full pixel curve has one point per distinct score
        out["pixel_f1_fixed"] = metrics.f1_at(masks, maps, threshold)
        fpr, pro = metrics.pro_curve(masks, maps)
        out["aupro_30"] = metrics.area_under_pro(fpr, pro, fpr_limit=0.3)
        curves["pro"] = metrics.thin_curve(fpr, pro)
    return MetricSet(out, curves)


def evaluate(detector: Detector, category: Category | str | Path) -> CategoryResult:
    """Score the test split of ``category`` with a fitted ``detector`` and compute metrics.

    Categories or defect types without ``ground_truth`` are evaluated at image level; the
    result's ``notices`` say what was skipped.
    """
    if not isinstance(category, Category):
        category = load_category(category, require_test=True)
    samples = category.test_samples
    if not samples:
        raise DataError(f"{category.root}/test holds no images; nothing to evaluate")
    notices = list(category.notices)
    start = time.perf_counter()
    scored = detector.score([s.path for s in samples])
    labels = np.array([s.is_anomalous for s in samples])
    if not labels.any() or labels.all():
        notices.append(
            f"{category.name}: test split has only {'defective' if labels.all() else 'good'} "
            "images; image AUROC needs both"
        )
    pixel_rows = [i for i, s in enumerate(samples) if not s.is_anomalous or s.mask_path]
    has_pixel = any(samples[i].mask_path for i in pixel_rows)
    masks = None
    if has_pixel:
        size = detector.image_size
        masks = np.zeros((len(samples), size, size), dtype=bool)
        for i in pixel_rows:
            if samples[i].mask_path:
                masks[i] = load_mask(samples[i].mask_path, size, image_path=samples[i].path)
        if len(pixel_rows) < len(samples):
            notices.append(
                f"{category.name}: pixel metrics use {len(pixel_rows)} of {len(samples)} test "
                "images (those with masks, and the good ones)"
            )
    else:
        notices.append(
            f"{category.name}: no ground-truth masks; pixel AUROC, pixel F1 and AUPRO skipped "
            "(image-level metrics only)"
        )
    computed = compute_metrics(
        labels,
        scored.scores,
        detector.threshold_,
        scored.maps[pixel_rows] if has_pixel else None,
        masks[pixel_rows] if has_pixel else None,
    )
    seconds = time.perf_counter() - start
    images = [
        ImageResult(
            str(s.path),
            s.defect_type,
            bool(s.is_anomalous),
            float(x),
            bool(x > detector.threshold_),
        )
        for s, x in zip(samples, scored.scores)
    ]
    return CategoryResult(
        category=category.name,
        detector=detector.name,
        metrics=computed.values,
        threshold=float(detector.threshold_),
        images=images,
        notices=notices,
        evaluate_seconds=seconds,
        n_train=len(category.train_paths),
        maps=scored.maps,
        masks=masks,
        curves=computed.curves,
    )


def fit_and_evaluate(
    make_detector: Callable[[], Detector],
    category: Category,
    model_dir: Path | None = None,
) -> tuple[Detector, CategoryResult]:
    """Fit a new detector on ``category``'s training images, save it, evaluate it."""
    detector = make_detector()
    start = time.perf_counter()
    detector.fit(category)
    fit_seconds = time.perf_counter() - start
    if model_dir is not None:
        detector.save(model_dir / category.name / "model.safetensors")
    result = evaluate(detector, category)
    result.fit_seconds = fit_seconds
    if getattr(detector, "history_", None):
        result.extra["history"] = detector.history_
    return detector, result
