"""High-level workflows behind the CLI: build detectors by name, benchmark, predict to a folder."""

from __future__ import annotations

import csv
import inspect
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.images import is_image_file, load_image
from defectscope.data.mvtec import discover, load_category
from defectscope.errors import ConfigError, DataError, DefectscopeError, unknown_name
from defectscope.evaluation import CategoryResult, fit_and_evaluate
from defectscope.models import DETECTORS, Detector, Prediction
from defectscope.models.classifier import cross_validate

log = logging.getLogger(__name__)


def make_detector(name: str, params: dict[str, Any]) -> Detector:
    """A new detector by name; options it does not take (e.g. ``backbone`` for the
    autoencoder) are left out, so one option set can serve a multi-model benchmark."""
    if name not in DETECTORS:
        raise ConfigError(unknown_name("model", name, DETECTORS))
    cls = DETECTORS[name]
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in params.items() if k in accepted})


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
    params: dict[str, Any],
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
        if name not in DETECTORS:
            raise ConfigError(unknown_name("model", name, DETECTORS))
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
            make = lambda n=name: make_detector(n, params)  # noqa: E731
            try:
                if name == "classifier":
                    result = cross_validate(make, category, seed=params.get("seed", 0))
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
    detector: Detector, inputs: Sequence[str | Path], out: Path, *, images: bool = True
) -> tuple[list[Prediction], list[str]]:
    """Predict every image under ``inputs``; write CSV, JSON, overlays and a contact sheet."""
    from defectscope.report.plots import contact_sheet
    from defectscope.report.visualize import overlay, save_png

    files, notices = expand_inputs(inputs)
    predictions = detector.predict(files)
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
