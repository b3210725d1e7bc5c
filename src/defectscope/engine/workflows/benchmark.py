"""Workflows behind the CLI: benchmark many categories, cross-validate a supervised detector
(predicting to a folder lives in :mod:`.predicting`, which imports no training code)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.mvtec import Category, discover, load_category
from defectscope.data.splits import stratified_folds
from defectscope.engine.fitting.estimator import Detector, make_detector
from defectscope.engine.fitting.sharding import Executor
from defectscope.engine.workflows.evaluation import compute_metrics, fit_and_evaluate
from defectscope.engine.workflows.predicting import write_meta
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
        histories.append(model.fit_info_.history)
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


@dataclass(frozen=True)
class CategoryJob:
    """One detector on one category: what a benchmark or a fit over a root runs, here or on
    another machine (plain data: every executor gets the same results)."""

    category: Category
    detector: str
    params: dict[str, Any]
    model_file: str
    evaluate: bool = True


@dataclass(frozen=True)
class JobOutcome:
    """A job's result (a :class:`CategoryResult` when evaluated, else the fitted model's
    summary), or the reason it failed."""

    result: CategoryResult | None = None
    fitted: dict[str, Any] | None = None
    failure: str | None = None


def _check_visible(category: Category) -> None:
    if not category.root.is_dir():
        import socket

        raise DataError(
            f"{category.root} is not visible on {socket.gethostname()}: every worker of a "
            "cluster needs the data and project folders at the same path (shared storage)"
        )


def run_job(job: CategoryJob) -> JobOutcome:
    """Fit (and evaluate) one detector on one category; data problems become a failure line."""
    category, name = job.category, job.detector
    make = lambda: make_detector(name, job.params)  # noqa: E731
    try:
        _check_visible(category)
        if not job.evaluate:
            detector = make()
            start = time.perf_counter()
            detector.fit(category)
            seconds = time.perf_counter() - start
            detector.save(job.model_file)
            fitted = {
                "category": category.name,
                "detector": name,
                "n_train": len(category.train_paths),
                "threshold": detector.threshold_,
                "fit_seconds": round(seconds, 2),
                "model": job.model_file,
            }
            return JobOutcome(fitted=fitted)
        if detector_info(name).supervised:
            return JobOutcome(result=cross_validate(make, category))
        _, result = fit_and_evaluate(make, category, Path(job.model_file).parents[1])
        return JobOutcome(result=result)
    except DefectscopeError as exc:
        return JobOutcome(failure=f"{category.name} ({name}): {exc}")


def _jobs(
    folders: Sequence[Path],
    models: Sequence[str],
    params: dict[str, dict[str, Any]],
    model_file: Callable[[str, str], Path],
    failures: list[str],
    *,
    evaluate: bool,
) -> list[CategoryJob]:
    """One job per loadable category and model; categories that fail to load go to
    ``failures`` (once, whatever the number of models)."""
    jobs = []
    for folder in folders:
        try:
            category = load_category(folder, require_test=evaluate)
        except DataError as exc:
            failures.append(f"{folder.name}: {exc}")
            continue
        for name in models:
            path = str(model_file(name, category.name))
            jobs.append(CategoryJob(category, name, params.get(name, {}), path, evaluate))
    return jobs


def _outcomes(
    jobs: Sequence[CategoryJob], executor: Executor | None, log: Callable[[str], None]
) -> Iterator[tuple[CategoryJob, JobOutcome]]:
    """Each job with its outcome, in job order: here one after the other (saying what starts),
    or through ``executor``."""
    if executor is None:
        for job in jobs:
            category = job.category
            log(
                f"{job.detector} on {category.name}: {len(category.train_paths)} train, "
                f"{len(category.test_samples)} test images"
            )
            yield job, run_job(job)
        return
    log(f"running {len(jobs)} jobs (category x model) on {executor}")
    # bars drawn by workers elsewhere would interleave on this terminal: progress is the driver's
    quiet = [replace(job, params={**job.params, "progress": False}) for job in jobs]
    for job, outcome in zip(jobs, executor.map(run_job, quiet)):
        state = "failed" if outcome.failure is not None else "done"
        log(f"{job.detector} on {job.category.name}: {state}")
        yield job, outcome


def benchmark(
    data: str | Path,
    models: Sequence[str],
    params: dict[str, dict[str, Any]],
    run: Path,
    *,
    categories: list[str] | None = None,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> BenchmarkOutcome:
    """Fit and evaluate every model on every category under ``data``; write the run folder.

    A category that fails (bad data) is reported and skipped; the others still run, and the
    tables are rewritten after each category so that nothing computed is lost. ``executor``
    (:mod:`defectscope.engine.fitting.sharding`) runs the (category, model) jobs elsewhere, e.g.
    one Ray task each; the results, table and report are the same as here.
    """
    from defectscope.report.table import write_tables

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
        # every option as it ran (defaults included), not only what was given
        "effective": {name: _effective(name, params.get(name, {})) for name in models},
        "executor": str(executor) if executor is not None else "local",
        "failures": failures,
        "status": "running",
        "categories": [f.name for f in folders],
        "completed": [],
    }
    # run.json exists from the start and says how far the run got: an interrupted benchmark
    # leaves a folder that `defectscope report` can still read
    write_meta(run, meta)
    try:
        jobs = _jobs(
            folders,
            models,
            params,
            lambda name, cat: run / "models" / name / cat / "model.safetensors",
            failures,
            evaluate=True,
        )
        for job, outcome in _outcomes(jobs, executor, log):
            if outcome.failure is not None:
                failures.append(outcome.failure)
                continue
            results.append(outcome.result)
            for notice in dict.fromkeys(outcome.result.notices):  # as each category finishes
                log(notice if notice.startswith(("warning:", "shift:")) else f"notice: {notice}")
            write_tables(results, run)
            meta["completed"].append(f"{job.category.name} ({job.detector})")
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


def _effective(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Every option of detector ``name`` with the values ``given`` applied (no progress)."""
    config, engine = make_detector(name, given).options()
    out = {**config.to_dict(), **engine.to_dict()}
    out.pop("progress", None)
    return out


def fit_root(
    data: str | Path,
    model: str,
    params: dict[str, Any],
    run: Path,
    *,
    categories: list[str] | None = None,
    command: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
    executor: Executor | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Fit ``model`` on every category under the root ``data``: ``run/<category>/model.safetensors``
    and ``run/fitted.json`` (one entry per category, and the failures). Returns both lists."""
    make_detector(model, params).options()
    folders = discover(data, categories)
    failures: list[str] = []
    fitted: list[dict[str, Any]] = []
    meta = {
        "command": list(command or []),
        "data": str(data),
        "model": model,
        "params": params,
        "executor": str(executor) if executor is not None else "local",
        "status": "running",
        "fitted": fitted,
        "failures": failures,
    }
    write_meta(run, meta)
    try:
        jobs = _jobs(
            folders,
            [model],
            {model: params},
            lambda name, cat: run / cat / "model.safetensors",
            failures,
            evaluate=False,
        )
        for _, outcome in _outcomes(jobs, executor, log):
            if outcome.failure is not None:
                failures.append(outcome.failure)
            else:
                fitted.append(outcome.fitted)
            write_meta(run, meta)
    except BaseException:
        meta["status"] = "interrupted"
        write_meta(run, meta)
        raise
    meta["status"] = "complete" if fitted else "failed"
    write_meta(run, meta)
    if not fitted:
        raise DataError("no category could be fitted: " + "; ".join(failures))
    return fitted, failures
