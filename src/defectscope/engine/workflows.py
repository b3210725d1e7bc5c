"""Workflows behind the CLI: benchmark many categories, cross-validate a supervised detector,
predict to a folder."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.images import is_image_file, load_image
from defectscope.data.mvtec import Category, discover, load_category
from defectscope.data.splits import stratified_folds
from defectscope.engine.estimator import Detector, make_detector
from defectscope.engine.evaluation import compute_metrics, fit_and_evaluate
from defectscope.engine.scoring import Scorer
from defectscope.errors import DataError, DefectscopeError
from defectscope.models import detector_info
from defectscope.results import CategoryResult, ImageResult, Prediction

log = logging.getLogger(__name__)


def cross_validate(make: Callable[[], Detector], category: Category) -> CategoryResult:
    """Stratified k-fold over the test split for a supervised detector: out-of-fold scores,
    metrics and accuracy; every image is scored by a model that never saw it.

    The number of folds and the seed are the detector's ``folds`` and ``seed`` options.
    """
    probe = make()
    folds, seed, name = probe.folds, probe.seed, probe.name
    samples = category.test_samples
    labels = np.array([s.is_anomalous for s in samples])
    if min(labels.sum(), (~labels).sum()) < folds:
        raise DataError(
            f"{category.name}: {folds}-fold cross-validation needs at least {folds} good and "
            f"{folds} defective test images; found {(~labels).sum()} and {labels.sum()}"
        )
    paths = [s.path for s in samples]
    scores = np.zeros(len(samples), dtype=np.float32)
    parts = stratified_folds(labels, folds, seed)
    histories = []
    start = time.perf_counter()
    for part in parts:
        train_idx = np.setdiff1d(np.arange(len(samples)), part)
        model = make().fit([paths[i] for i in train_idx], labels[train_idx])
        scores[part] = model.score([paths[i] for i in part]).scores
        histories.append(model.fit_info_.get("history"))
    seconds = time.perf_counter() - start
    accuracy = float(np.mean((scores > 0.5) == labels))
    images = [
        ImageResult(str(s.path), s.defect_type, bool(s.is_anomalous), float(x), bool(x > 0.5))
        for s, x in zip(samples, scores)
    ]
    computed = compute_metrics(labels, scores, 0.5)
    return CategoryResult(
        category=category.name,
        detector=name,
        metrics=computed.values,
        threshold=0.5,
        images=images,
        curves=computed.curves,
        notices=[
            f"{category.name}: {name} scored by {folds}-fold cross-validation over the "
            "test split (supervised; no localisation)"
        ],
        fit_seconds=seconds,
        evaluate_seconds=0.0,
        n_train=int(len(samples) * (folds - 1) / folds),
        extra={"accuracy": accuracy, "folds": [p.tolist() for p in parts], "history": histories[0]},
    )


def write_run(results: Sequence[CategoryResult], run: Path, meta: dict[str, Any]) -> None:
    """Tables, figures and ``report.html`` of a run folder."""
    from defectscope.report.html import write_report
    from defectscope.report.table import write_tables

    write_tables(results, run)
    (run / "run.json").write_text(json.dumps(meta, indent=2, default=str))
    write_report(results, run, meta)


@dataclass(frozen=True)
class BenchmarkOutcome:
    """What a benchmark produced: one result per (category, model) that ran, and one line per
    category or model that failed (bad data), saying why."""

    results: list[CategoryResult]
    failures: list[str]


def benchmark(
    data: str | Path,
    models: Sequence[str],
    params: dict[str, dict[str, Any]],
    run: Path,
    *,
    categories: list[str] | None = None,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> BenchmarkOutcome:
    """Fit and evaluate every model on every category under ``data``; write the run folder.

    A category that fails (bad data) is reported and skipped; the others still run, and the
    tables are rewritten after each category so that nothing computed is lost.
    """
    for name in models:
        detector_info(name)
        make_detector(name, params.get(name, {})).options()  # bad options fail before any work
    folders = discover(data, categories)
    results: list[CategoryResult] = []
    failures: list[str] = []
    meta = {
        "command": list(command or []),
        "data": str(data),
        "models": list(models),
        "params": params,
        "failures": failures,
    }
    for folder in folders:
        try:
            category = load_category(folder, require_test=True)
        except DataError as exc:
            failures.append(f"{folder.name}: {exc}")
            continue
        for name in models:
            log(
                f"{name} on {category.name}: {len(category.train_paths)} train, "
                f"{len(category.test_samples)} test images"
            )
            make = lambda n=name: make_detector(n, params.get(n, {}))  # noqa: E731
            try:
                if detector_info(name).supervised:
                    result = cross_validate(make, category)
                else:
                    _, result = fit_and_evaluate(make, category, run / "models" / name)
            except DefectscopeError as exc:
                failures.append(f"{category.name} ({name}): {exc}")
                continue
            results.append(result)
            from defectscope.report.table import write_tables

            write_tables(results, run)
    if not results:
        raise DataError("no category could be evaluated: " + "; ".join(failures))
    write_run(results, run, meta)
    return BenchmarkOutcome(results, failures)


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (recursively, sorted); returns them and notices."""
    files: list[Path] = []
    notices: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and not p.name.startswith("."))
            images = [p for p in found if is_image_file(p)]
            if len(images) < len(found):
                notices.append(f"skipped {len(found) - len(images)} non-image files in {item}")
            files += images
        elif item.is_file():
            if not is_image_file(item):
                raise DataError(f"{item} is not an image file (.png, .jpg, .bmp, .tif, .webp)")
            files.append(item)
        else:
            raise DataError(f"input not found: {item}")
    if not files:
        raise DataError(f"no image files in {', '.join(map(str, inputs))}")
    return files, notices


def predict_to_folder(
    detector: Scorer, inputs: Sequence[str | Path], out: Path, *, images: bool = True
) -> tuple[list[Prediction], list[str]]:
    """Predict every image under ``inputs``; write CSV, JSON, overlays and a contact sheet."""
    from defectscope.engine.shortcuts import format_notices, image_formats, shift_notices
    from defectscope.report.plots import contact_sheet
    from defectscope.report.visualize import overlay, save_png

    files, notices = expand_inputs(inputs)
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    predictions = detector.predict(files, stats=stats)
    means, stds = (np.concatenate(parts) for parts in zip(*stats))
    notices += shift_notices(
        "", {"the predicted images": (means, stds)}, detector.training_intensity
    )
    train_formats = detector.fit_info_.get("formats")
    notices += format_notices("predicted ", image_formats(files), train_formats)
    rows = [
        {
            "path": p.path,
            "score": p.score,
            "is_anomalous": p.is_anomalous,
            "threshold": detector.threshold_,
        }
        for p in predictions
    ]
    with open(out / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "predictions.json").write_text(json.dumps(rows, indent=2))
    if images:
        maps = np.stack([p.anomaly_map for p in predictions])
        vmin, vmax = float(maps.min()), float(max(maps.max(), detector.threshold_))
        used: set[str] = set()
        for p in predictions:
            stem = Path(p.path).stem
            name = stem if stem not in used else f"{stem}_{len(used)}"
            used.add(name)
            image = load_image(p.path, None)
            save_png(overlay(image, p.anomaly_map, vmin, vmax), out / "overlays" / f"{name}.png")
        contact_sheet(predictions, detector.threshold_, (vmin, vmax), out / "most_anomalous.png")
    return predictions, notices
