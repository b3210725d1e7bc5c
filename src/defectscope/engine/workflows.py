"""Workflows behind the CLI: benchmark many categories, cross-validate a supervised detector
(predicting to a folder lives in :mod:`.predicting`, which imports no training code)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.mvtec import Category, discover, load_category
from defectscope.data.splits import stratified_folds
from defectscope.engine.estimator import Detector, make_detector
from defectscope.engine.evaluation import compute_metrics, fit_and_evaluate
from defectscope.engine.predicting import write_meta
from defectscope.errors import DataError, DefectscopeError
from defectscope.models import detector_info
from defectscope.results import CategoryResult, ImageResult

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
    write_meta(run, meta)
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
        "status": "running",
        "categories": [f.name for f in folders],
        "completed": [],
    }
    # run.json exists from the start and says how far the run got: an interrupted benchmark
    # leaves a folder that `defectscope report` can still read
    write_meta(run, meta)
    try:
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
                meta["completed"].append(f"{category.name} ({name})")
                write_meta(run, meta)
    except BaseException:
        meta["status"] = "interrupted"
        write_meta(run, meta)
        raise
    if not results:
        meta["status"] = "failed"
        write_meta(run, meta)
        raise DataError("no category could be evaluated: " + "; ".join(failures))
    meta["status"] = "complete"
    write_run(results, run, meta)
    return BenchmarkOutcome(results, failures)
