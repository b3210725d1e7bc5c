"""Evaluating a fitted detector (or an exported file) on a category's test split (torch-free)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from defectscope import metrics
from defectscope.data.images import load_mask
from defectscope.data.mvtec import GOOD, Category, load_category
from defectscope.engine.scoring.scorer import Scorer
from defectscope.engine.scoring.shortcuts import (
    format_notices,
    group_by,
    image_formats,
    shift_notices,
    shortcut_aurocs,
    shortcut_notice,
)
from defectscope.errors import DataError
from defectscope.results import METRICS, CategoryResult, ImageResult, pick_examples
from defectscope.verdict import fails

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricSet:
    """Metric values (every name in :data:`METRICS`, None where the inputs do not allow it)
    and the curves they came from, thinned for plotting."""

    values: dict[str, float | None]
    curves: dict[str, tuple[np.ndarray, np.ndarray]]


def compute_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> MetricSet:
    """Every image metric in :data:`METRICS` that the labels allow, the curve sorted once (pixel
    metrics stream through :class:`~defectscope.metrics.PixelAccumulator` in :func:`evaluate`)."""
    out: dict[str, float | None] = dict.fromkeys(METRICS)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    out["image_accuracy_fixed"] = float(np.mean(fails(scores, threshold) == labels))
    if labels.any() and not labels.all():
        roc = metrics.roc_summary(labels, scores)
        out["image_auroc"], out["image_f1_best"] = roc.auroc, roc.best_f1
        curves["image_roc"] = (roc.fpr, roc.tpr)
    elif labels.any():
        out["image_f1_best"] = metrics.best_f1(labels, scores)[0]
    if labels.any():
        out["image_f1_fixed"] = metrics.f1_at(labels, scores, threshold)
    return MetricSet(out, curves)


def evaluate(detector: Scorer, category: Category | str | Path) -> CategoryResult:
    """Score the test split of ``category`` with a fitted ``detector`` and compute metrics.

    Streaming: maps and masks are consumed batch by batch (pixel metrics accumulate in a
    :class:`~defectscope.metrics.PixelAccumulator`), so memory does not grow with the number of
    test images; the few images the example figure draws are scored again at the end.
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
    labels = np.array([s.is_anomalous for s in samples])
    if not labels.any() or labels.all():
        notices.append(
            f"{category.name}: test split has only {'defective' if labels.all() else 'good'} "
            "images; image AUROC needs both"
        )
    pixel = np.array([not s.is_anomalous or s.mask_path is not None for s in samples])
    has_pixel = any(s.mask_path for s in samples)
    size = detector.input_shape
    threshold = float(detector.threshold_)
    accumulator = metrics.PixelAccumulator(threshold) if has_pixel else None
    empty: list[str] = []

    def mask_of(i: int) -> np.ndarray:
        if samples[i].mask_path is None:  # a good image: no defect pixel
            return np.zeros(size, dtype=bool)
        return load_mask(samples[i].mask_path, size, image_path=samples[i].path)

    stats: list[tuple[np.ndarray, np.ndarray]] = []
    scores = np.empty(len(samples), dtype=np.float32)
    for idx, batch_scores, batch_maps in detector.iter_scores(
        [s.path for s in samples], stats=stats
    ):
        scores[idx.start : idx.stop] = batch_scores
        if accumulator is not None:
            keep = [i for i in idx if pixel[i]]
            if keep:
                masks = np.stack([mask_of(i) for i in keep])
                empty += [
                    samples[i].path.name
                    for i, m in zip(keep, masks)
                    if samples[i].mask_path and not m.any()
                ]
                accumulator.update(batch_maps[np.asarray(keep) - idx.start], masks)
    means, stds = (np.concatenate(parts) for parts in zip(*stats))
    train = detector.training_intensity
    shortcuts = shortcut_aurocs(labels, means, stds, train)
    groups = group_by([s.defect_type for s in samples], means, stds)
    good = {k: v for k, v in groups.items() if k == GOOD}
    defective = {k: v for k, v in groups.items() if k != GOOD}
    formats = image_formats([s.path for s in samples])
    notices += format_notices(f"{category.name}/test ", formats, detector.fit_info_.formats)
    notices += shift_notices(f"{category.name}/test/", good, train)
    notices += shift_notices(f"{category.name}/test/", defective, train, contrast=False)

    computed = compute_metrics(labels, scores, threshold)
    values, curves = dict(computed.values), dict(computed.curves)
    if accumulator is not None:
        if empty:
            shown = ", ".join(empty[:3]) + (f" and {len(empty) - 3} more" if len(empty) > 3 else "")
            notices.append(
                f"warning: {category.name}: {len(empty)} defective test images have an empty "
                f"(all-zero) mask ({shown}): they count at image level, but no pixel of theirs is "
                "a defect pixel in the pixel metrics; check the ground truth"
            )
        if not accumulator.positives:
            notices.append(
                f"warning: {category.name}: every ground-truth mask is empty; pixel AUROC, pixel "
                "F1 and AUPRO are n/a"
            )
        if not pixel.all():
            notices.append(
                f"{category.name}: pixel metrics use {int(pixel.sum())} of {len(samples)} test "
                "images (those with masks, and the good ones)"
            )
        result = accumulator.result()
        values.update(
            pixel_auroc=result.auroc,
            pixel_f1_best=result.best_f1,
            pixel_f1_fixed=result.f1_fixed,
            aupro_30=result.aupro,
        )
        if result.roc is not None:
            curves["pixel_roc"] = metrics.thin_curve(*result.roc)
        if result.pro is not None:
            curves["pro"] = metrics.thin_curve(*result.pro)
    else:
        notices.append(
            f"{category.name}: no ground-truth masks; pixel AUROC, pixel F1 and AUPRO skipped "
            "(image-level metrics only)"
        )
    images = [
        ImageResult(str(s.path), s.defect_type, bool(s.is_anomalous), float(x), fails(x, threshold))
        for s, x in zip(samples, scores)
    ]
    # the few images the example figure draws, scored again (nothing else is kept)
    chosen = sorted({i for _, i in pick_examples(images, threshold)})
    example_maps, example_masks = {}, None
    if chosen:
        again = detector.score([samples[i].path for i in chosen])
        example_maps = dict(zip(chosen, again.maps))
        if has_pixel:
            example_masks = {i: mask_of(i) for i in chosen}
    seconds = time.perf_counter() - start
    warning = shortcut_notice(category.name, detector.name, values["image_auroc"], shortcuts)
    if warning:
        notices.append(warning)
    return CategoryResult(
        category=category.name,
        detector=detector.name,
        metrics=values,
        threshold=threshold,
        images=images,
        notices=list(dict.fromkeys(notices)),
        evaluate_seconds=seconds,
        n_train=len(category.train_paths),
        example_maps=example_maps,
        example_masks=example_masks,
        curves=curves,
        extra={
            "shortcuts": shortcuts,
            "pixel_auroc_bound": result.auroc_bound if accumulator is not None else None,
        },
        colour_scale=detector.colour_scale,
        model=detector.identity(),
    )


def fit_and_evaluate(
    make_detector: Callable[[], Scorer],
    category: Category,
    model_dir: Path | None = None,
) -> tuple[Scorer, CategoryResult]:
    """Fit a new detector on ``category``'s training images, save it, evaluate it."""
    detector = make_detector()
    start = time.perf_counter()
    detector.fit(category)
    fit_seconds = time.perf_counter() - start
    if model_dir is not None:
        detector.save(model_dir / category.name / "model.safetensors")
    result = evaluate(detector, category)
    history = detector.fit_info_.history
    extra = {**result.extra, "history": history} if history else result.extra
    examples = getattr(detector, "synthetic_examples_", None) or []
    return detector, replace(
        result, fit_seconds=fit_seconds, extra=extra, synthetic_examples=examples
    )
