"""Batch predictions with Ray Data: a pool of actors that each load the model once (the exported
ONNX file needs no torch), streaming over the inputs and writing the results in input order to
``predictions.parquet`` and ``predictions.csv`` as they arrive.

Memory: the driver holds the list of paths (an Arrow table, about the paths' own bytes) and one
batch of results at a time; Ray Data's streaming executor keeps a bounded number of batches in
flight. An image that cannot be read or scored gets an ``error`` row and the run goes on.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.atomic import publish
from defectscope.errors import ConfigError, DefectscopeError

#: columns of predictions.csv / .parquet, in order, with their Arrow types
COLUMN_TYPES = (
    ("index", "int64"),
    ("path", "string"),
    ("name", "string"),
    ("frame", "string"),  # a local predict's video columns: empty here (images only)
    ("time_s", "string"),
    ("score", "float64"),
    ("normalized_score", "float64"),
    ("verdict", "string"),
    ("is_anomalous", "bool"),
    ("threshold", "float64"),
    ("n_regions", "int64"),
    ("regions", "string"),
    ("overlay", "string"),
    ("error", "string"),
)
COLUMNS = tuple(name for name, _ in COLUMN_TYPES)
#: per-image intensity statistics the actors return for the driver's shift check
STATS = ("_mean", "_std")


class PredictActor:
    """Loads the model once per actor; ``__call__`` scores one batch of rows."""

    def __init__(
        self,
        model: str,
        out: str,
        save: str,
        threshold: float | None,
        load_options: dict[str, Any],
    ) -> None:
        from defectscope.engine.workflows.loading import load

        self.detector = load(model, progress=False, **load_options)
        self.out = Path(out)
        self.save = save
        self.threshold = threshold
        self.on_map = self.detector.threshold_on_map

    def _rows(self, paths: list[str], names: list[str]) -> list[dict[str, Any]]:
        from defectscope.engine.workflows.predicting import annotate
        from defectscope.verdict import colour_scale_for

        stats: list[tuple[np.ndarray, np.ndarray]] = []
        predictions = self.detector.predict(paths, threshold=self.threshold, stats=stats)
        means, stds = (np.concatenate(parts) for parts in zip(*stats))
        scale = self.detector.colour_scale  # a model without one: this batch's maps
        if scale is None:
            maps = np.stack([p.anomaly_map for p in predictions])
            scale = colour_scale_for(None, maps, predictions[0].threshold)
        rows = []
        for p, name, mean, std in zip(predictions, names, means, stds):
            row, _ = annotate(p, name, scale, self.on_map, self.out, save=self.save)
            rows.append(
                {
                    **row,
                    "regions": json.dumps(row["regions"]),
                    "error": "",
                    # for the driver's shift check; not written to the tables
                    "_mean": float(mean),
                    "_std": float(std),
                }
            )
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        paths = [str(p) for p in batch["path"]]
        names = [str(n) for n in batch["name"]]
        try:
            rows = self._rows(paths, names)
        except DefectscopeError:
            # one bad image fails its batch: score the batch image by image, keep the errors
            rows = []
            for path, name in zip(paths, names):
                try:
                    rows += self._rows([path], [name])
                except DefectscopeError as exc:
                    rows.append(error_row(str(exc)))
        out: dict[str, list] = {
            "index": list(batch["index"]),
            "path": paths,
            "name": names,
            "frame": [""] * len(paths),
            "time_s": [""] * len(paths),
        }
        for key in (*COLUMNS[5:], *STATS):
            out[key] = [row.get(key, float("nan")) for row in rows]
        return out


def error_row(message: str) -> dict[str, Any]:
    """A local predict's error row (:func:`~defectscope.engine.workflows.predicting.error_fields`),
    with the regions as their JSON text, as in the Parquet file."""
    from defectscope.engine.workflows.predicting import error_fields

    row = error_fields(message)
    return {**row, "regions": json.dumps(row["regions"])}


def _schema():
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(kind)) for name, kind in COLUMN_TYPES])


def read_path_list(path: str | Path) -> list[str]:
    """Image paths from a text file, one per line (blank lines and ``#`` comments skipped)."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def predict_ray(
    model: str | Path,
    inputs: Sequence[str | Path],
    out: Path,
    *,
    path_lists: Sequence[str | Path] = (),
    actors: int = 2,
    actor_cpus: float = 1.0,
    batch_size: int = 16,
    save: str = "none",
    threshold: float | None = None,
    load_options: dict[str, Any] | None = None,
    command: Sequence[str] | None = None,
    log=print,
) -> dict[str, Any]:
    """Score every image of ``inputs`` (files and folders) and ``path_lists`` (text files of
    paths) on a Ray Data actor pool; write ``predictions.parquet``, ``predictions.csv`` and
    ``run.json`` under ``out``. Ray must be started (:func:`defectscope.cluster.start_ray`).

    Returns the summary written to ``run.json``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from defectscope.data.images import is_image_file
    from defectscope.data.video import is_video_file
    from defectscope.engine.workflows.predicting import (
        SAVE_CHOICES,
        expand_inputs,
        relative_names,
        write_meta,
    )
    from defectscope.version import __version__

    if save not in SAVE_CHOICES:
        raise ConfigError(f"save must be one of {', '.join(SAVE_CHOICES)}, got {save!r}")
    if actors < 1 or batch_size < 1:
        raise ConfigError(f"actors and batch size must be at least 1, got {actors}, {batch_size}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    notices: list[str] = []
    files: list[Path] = []
    if inputs:
        videos: list[Path] = []
        files, notices = expand_inputs(inputs, videos)
        if videos:
            raise ConfigError(
                "video inputs are not scored with --executor ray; predict them without it "
                f"(found {videos[0]})"
            )
    listed = [p for lst in path_lists for p in read_path_list(lst)]
    for p in listed:
        if is_video_file(Path(p)) or not is_image_file(Path(p)):
            notices.append(f"{p}: not an image file name; recorded as an error")
    paths = [str(f) for f in files] + listed
    # names (and overlay files) relative to the folder all inputs share: never outside `out`
    names = relative_names([Path(p) for p in paths]) if paths else []
    if not paths:
        raise ConfigError("no images to predict")
    table = pa.table(
        {"index": pa.array(range(len(paths)), pa.int64()), "path": paths, "name": names}
    )
    load_options = dict(load_options or {})
    load_options.setdefault("batch_size", batch_size)
    load_options.setdefault("num_workers", 1)
    # the driver checks the model once (a wrong path fails here, not in every actor)
    from defectscope.engine.workflows.loading import load

    scorer = load(model, progress=False, **load_options)
    identity = scorer.identity()
    # Blocks cut here, not by a repartition: that would need CPUs the actor pool already holds.
    # at least four per actor, at most 4000, about one batch each
    n_blocks = min(len(paths), 4000, max(4 * actors, -(-len(paths) // batch_size)))
    rows = -(-len(paths) // n_blocks)
    blocks = [table.slice(start, rows) for start in range(0, len(paths), rows)]
    # Results in input order (set before the dataset is made: it copies the context)
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        PredictActor,
        fn_constructor_kwargs={
            "model": str(Path(model).resolve()),
            "out": str(out.resolve()),
            "save": save,
            "threshold": threshold,
            "load_options": load_options,
        },
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=actor_cpus,
    )
    schema = _schema()
    counts = {"pass": 0, "fail": 0, "error": 0}
    t0 = time.perf_counter()
    log(f"scoring {len(paths)} images on {actors} Ray actors ({actor_cpus:g} CPU each)")
    # streamed into temporary files, renamed once the last row is in: a failure (a full disk)
    # leaves neither a half-written table nor a temporary file
    parts = {
        out / name: out / f".{name}.partial" for name in ("predictions.parquet", "predictions.csv")
    }
    try:
        with (
            pq.ParquetWriter(parts[out / "predictions.parquet"], schema) as parquet,
            open(parts[out / "predictions.csv"], "w", newline="") as handle,
        ):
            writer = csv.writer(handle)
            writer.writerow(COLUMNS)
            expected = 0
            means: list[float] = []
            stds: list[float] = []
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                means += batch.column("_mean").to_pylist()
                stds += batch.column("_std").to_pylist()
                batch = batch.select(list(COLUMNS)).cast(schema)
                index = batch.column("index").to_numpy()
                due = np.arange(expected, expected + len(index))
                if not np.array_equal(index, due):  # an error beats a silently shuffled file
                    raise RuntimeError(f"Ray Data returned rows out of order near row {expected}")
                expected += len(index)
                parquet.write_table(batch)
                columns = [batch.column(c).to_pylist() for c in COLUMNS]
                for row in zip(*columns):
                    writer.writerow(["" if v is None else v for v in row])
                for verdict in columns[COLUMNS.index("verdict")]:
                    counts[verdict] += 1
        for final, tmp in parts.items():
            publish(tmp, final)
    finally:
        for tmp in parts.values():
            tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    # the shift check of a local predict, over the images that could be read
    from defectscope.engine.scoring.shortcuts import shift_notices

    read = np.isfinite(np.asarray(means, dtype=np.float64))
    if read.any():
        measured = (np.asarray(means)[read], np.asarray(stds)[read])
        notices += shift_notices("", {"the predicted images": measured}, scorer.training_intensity)
    meta = {
        "command": list(command or []),
        "defectscope_version": __version__,
        "executor": f"ray data ({actors} actors x {actor_cpus:g} CPU, batches of {batch_size})",
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **identity,
        "threshold_used": identity["threshold"] if threshold is None else threshold,
        "threshold_given": threshold,
        "images": len(paths),
        "failed": counts["fail"],
        "errors": counts["error"],
        "passed": counts["pass"],
        "seconds": round(seconds, 2),
        "images_per_second": round(len(paths) / seconds, 2) if seconds > 0 else None,
        "notices": notices,
    }
    write_meta(out, meta)
    return meta
