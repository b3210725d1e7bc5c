"""Predicting to a folder: CSV, JSON, ``run.json``, annotated overlays and a contact sheet.

Imports only what scoring an exported model needs (no training engine, no metrics, no
matplotlib), so a one-image ``predict`` starts fast.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.atomic import write_csv, write_text
from defectscope.data.images import (
    DecodedImages,
    folder_images,
    is_image_file,
    keeping_decoded,
    load_image,
    unreadable,
)
from defectscope.engine.scoring.scorer import Scorer
from defectscope.errors import DataError
from defectscope.results import Prediction
from defectscope.verdict import colour_scale_for, fails, verdict_row


def write_meta(run: Path, meta: dict[str, Any]) -> None:
    """Write ``run.json`` atomically (a kill mid-write leaves the previous one)."""
    write_text(run / "run.json", json.dumps(meta, indent=2, default=str))


def expand_inputs(
    inputs: Sequence[str | Path], videos: list[Path] | None = None
) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (recursively, sorted); returns them and notices.

    With ``videos`` (a list), video files are appended to it instead of being refused.
    """
    from defectscope.data.video import is_video_file

    files: list[Path] = []
    notices: list[str] = []
    for item in map(Path, inputs):
        if item.is_dir():
            images, others, notice = folder_images(item)
            if notice:
                notices.append(notice)
            clips = [p for p in others if videos is not None and is_video_file(p)]
            if len(clips) < len(others):
                skipped = len(others) - len(clips)
                notices.append(f"skipped {skipped} non-image files in {item}")
            files += images
            if videos is not None:
                videos.extend(clips)
        elif item.is_file():
            if videos is not None and is_video_file(item):
                videos.append(item)
                continue
            if not is_image_file(item):
                raise DataError(
                    f"{item} is not an image file (.png, .jpg, .bmp, .tif, .webp)"
                    + (" or a video (.mp4, .avi, .mov, .mkv, ...)" if videos is not None else "")
                )
            files.append(item)
        else:
            raise unreadable(item, "input")  # missing, a broken link or a link loop
    if not files and not videos:
        raise DataError(f"no image files in {', '.join(map(str, inputs))}")
    unique = list(dict.fromkeys(files))
    if len(unique) < len(files):
        notices.append(f"{len(files) - len(unique)} images were given twice; each is scored once")
    return unique, notices


def relative_names(files: Sequence[Path]) -> list[str]:
    """Unique, readable names for ``files``: their paths relative to the deepest folder they
    share (``d1/a.png``, ``d2/a.png``), as POSIX paths."""
    import os

    resolved = [p.resolve() for p in files]
    if len(resolved) == 1:
        return [resolved[0].name]
    common = Path(os.path.commonpath([p.parent for p in resolved]))
    return [p.relative_to(common).as_posix() for p in resolved]


def overlay_name(relative: str) -> str:
    """The overlay file of an input: its relative path, with ``.png`` in place of ``.png`` and
    appended to other suffixes (``a.jpg`` -> ``a.jpg.png``), so that names never collide."""
    return relative if relative.lower().endswith(".png") else relative + ".png"


def annotate(
    p: Prediction,
    rel: str,
    scale: tuple[float, float],
    on_map: bool,
    out: Path,
    *,
    save: str,
    keep: bool = False,
    decoded: DecodedImages | None = None,
) -> tuple[dict[str, Any], np.ndarray | None]:
    """The verdict row of one prediction (:func:`~defectscope.verdict.verdict_row`) with its
    overlay file under ``out`` (written when ``save`` asks for it; ``""`` otherwise), and the
    overlay picture (when written or ``keep``), drawn on the image kept in ``decoded`` where
    its scoring kept it."""
    from defectscope.data.images import image_size
    from defectscope.report.visualize import save_png, verdict_overlay

    wanted = save == "all" or (save == "fail" and fails(p.score, p.threshold))
    # the image as its scoring decoded it (``decoded``, taken whether drawn or not), else decoded
    # here: for its overlay, whose array gives its size as shown, or not at all (its header's
    # size)
    image = decoded.take(p.path) if decoded is not None else None
    if not (wanted or keep):
        image = None
    elif image is None:
        image = load_image(p.path, None)
    size = image_size(p.path) if image is None else (image.shape[1], image.shape[0])
    row, regions = verdict_row(
        p.score, p.normalized_score, p.threshold, p.anomaly_map, size, on_map
    )
    row["overlay"] = ""
    if image is None:
        return row, None
    picture = verdict_overlay(image, p.anomaly_map, scale, row, regions, on_map, rel)
    if wanted:
        row["overlay"] = f"overlays/{overlay_name(rel)}"
        save_png(picture, out / row["overlay"])
    return row, picture


#: overlays queued for the drawing threads at most: two batches' worth, so that one batch is
#: drawn while the next is scored and a long run holds only these maps and images
MAX_QUEUED = 64


class _Drawing:
    """The verdict rows and overlays of scored images, drawn (and written) on ``workers``
    threads while the caller scores the next batch (Pillow's drawing and zlib release the GIL;
    0 or 1: drawn at once, here), and the pictures of the :data:`SHEET_SIZE` highest scores.

    An image's picture is kept when its score is among the highest so far: every image of the
    final top was among them when it came, and a picture pushed out is dropped, so the sheet
    costs :data:`SHEET_SIZE` pictures however long the run. Ties rank the earlier image first,
    as a stable sort by score does."""

    def __init__(self, draw, workers: int, sheet: bool):
        self.draw, self.sheet = draw, sheet
        self.rows: dict[int, dict[str, Any]] = {}
        self.pictures: dict[int, np.ndarray] = {}
        self.top: list[tuple[float, int]] = []  # a min-heap of (score, -index)
        self.in_top: set[int] = set()
        self.queued: deque = deque()
        self.pool = None
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="overlays")

    def _enters_top(self, score: float, i: int) -> bool:
        if not self.sheet:
            return False
        key = (score, -i)
        if len(self.top) == SHEET_SIZE:
            if key <= self.top[0]:
                return False
            _, out = heapq.heappop(self.top)
            self.in_top.discard(-out)
            self.pictures.pop(-out, None)
        heapq.heappush(self.top, key)
        self.in_top.add(i)
        return True

    def add(self, i: int, p: Prediction) -> None:
        keep = self._enters_top(p.score, i)
        if self.pool is None:
            self._done(i, self.draw(i, p, keep))
            return
        self.queued.append((i, self.pool.submit(self.draw, i, p, keep)))
        while len(self.queued) > MAX_QUEUED:
            self._collect()

    def _collect(self) -> None:
        i, future = self.queued.popleft()
        self._done(i, future.result())

    def _done(self, i: int, drawn: tuple[dict[str, Any], np.ndarray | None]) -> None:
        row, picture = drawn
        self.rows[i] = row
        if picture is not None and i in self.in_top:
            self.pictures[i] = picture

    def finish(self) -> list[np.ndarray]:
        """Waits for every overlay; returns the kept pictures, highest score first."""
        while self.queued:
            self._collect()
        ranked = sorted(self.top, reverse=True)  # (score, -index): earlier first among ties
        return [self.pictures[-j] for _, j in ranked if -j in self.pictures]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)  # no write outlives the call


@dataclass
class _Drawn:
    """What :func:`_score_and_draw` gives: verdict rows by input index, the contact sheet's
    pictures (highest score first), the colour scale used and how many parts failed."""

    rows: dict[int, dict[str, Any]]
    sheet: list[np.ndarray]
    scale: tuple[float, float]
    failed: int


def _score_and_draw(
    detector: Scorer,
    files: Sequence[Path],
    names: Sequence[str],
    skip: dict[int, str],
    t: float,
    out: Path,
    save: str,
    workers: int,
) -> tuple[list[tuple[np.ndarray, np.ndarray]], _Drawn]:
    """Score every file not in ``skip`` at threshold ``t`` and draw (and write, as ``save``
    asks) its overlay while the next batch is scored; returns the images' grey statistics and
    :class:`_Drawn`. A model saved before colour scales were fixed at fit time is scored whole
    first: its overlays share a scale from this call's maps."""
    at = [i for i in range(len(files)) if i not in skip]
    stats: list[tuple[np.ndarray, np.ndarray]] = []
    scale = detector.colour_scale
    with keeping_decoded() if scale is not None and save != "none" else nullcontext() as decoded:
        predictions = detector.iter_predictions([files[i] for i in at], threshold=t, stats=stats)
        if scale is None:  # every map first: no decode is kept for so long
            predictions = list(predictions)
            scale = colour_scale_for(None, np.stack([p.anomaly_map for p in predictions]), t)
        on_map = detector.threshold_on_map

        def draw(i: int, p: Prediction, keep: bool):
            return annotate(p, names[i], scale, on_map, out, save=save, keep=keep, decoded=decoded)

        drawing = _Drawing(draw, workers, sheet=save != "none")
        failed = 0
        try:
            for i, p in zip(at, predictions):
                failed += p.is_anomalous
                drawing.add(i, p)
            sheet = drawing.finish()
        finally:
            drawing.close()
    return stats, _Drawn(drawing.rows, sheet, scale, failed)


def error_fields(message: str) -> dict[str, Any]:
    """The verdict columns of an image that could not be read or scored."""
    return {
        "score": float("nan"),
        "normalized_score": float("nan"),
        "verdict": "error",
        "is_anomalous": None,
        "threshold": float("nan"),
        "n_regions": 0,
        "regions": [],
        "overlay": "",
        "error": message,
    }


SAVE_CHOICES = ("all", "fail", "none")
#: images in ``most_anomalous.png``
SHEET_SIZE = 12


def predict_to_folder(
    detector: Scorer,
    inputs: Sequence[str | Path],
    out: Path,
    *,
    save: str = "all",
    threshold: float | None = None,
    command: Sequence[str] | None = None,
    every: int = 1,
    workers: int = 2,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Predict every image under ``inputs``; write CSV, JSON, ``run.json``, overlays and a
    contact sheet of the most anomalous images. Returns the rows written (one per image, in
    input order; an unreadable image is a row with verdict ``error`` and its message) and the
    notices.

    Args:
        save: which overlays to write: ``all``, ``fail`` (failed parts only) or ``none``.
        threshold: pass/fail threshold for this call (default: the model's).
        command: the command line, recorded in ``run.json``.
        every: of a video, score every ``every``-th frame (written to ``frames/`` as PNG).
        workers: threads that draw and write the overlays (0 or 1: none).
    """
    from datetime import datetime, timezone

    from defectscope.engine.scoring.shortcuts import format_notices, image_formats, shift_notices
    from defectscope.report.visualize import save_png, tile_sheet
    from defectscope.version import __version__

    if save not in SAVE_CHOICES:
        raise DataError(f"save must be one of {', '.join(SAVE_CHOICES)}, got {save!r}")
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    videos: list[Path] = []
    files, notices = expand_inputs(inputs, videos)
    given = relative_names([*files, *videos])
    names, video_names = given[: len(files)], given[len(files) :]
    frames: dict[Path, Any] = {}
    if videos:
        from defectscope.data.video import extract_frames

        for video, video_name in zip(videos, video_names):
            taken = extract_frames(video, out / "frames" / video_name, every, notices)
            notices.append(
                f"{video_name}: {len(taken)} frames (every {every}) written to "
                f"frames/{video_name}/ and scored as images"
            )
            for frame in taken:
                frames[frame.path] = frame
                files.append(frame.path)
                names.append(f"{video_name}/{frame.path.name}")
    t = float(detector.threshold_ if threshold is None else threshold)
    errors: dict[int, str] = {}
    try:
        stats, drawn = _score_and_draw(detector, files, names, errors, t, out, save, workers)
    except DataError:
        # one unreadable image fails the call: find every such image, keep them as error rows
        # and score the others (as the Ray path does); overlays already written are written
        # again, the same bytes
        for i, file in enumerate(files):
            try:
                load_image(file, detector.input_shape)
            except DataError as exc:
                errors[i] = str(exc)
        if not errors or len(errors) == len(files):
            raise  # nothing to score: one line, no run folder
        stats, drawn = _score_and_draw(detector, files, names, errors, t, out, save, workers)
        notices.append(f"{len(errors)} of {len(files)} images could not be read: error rows")
    if stats:
        means, stds = (np.concatenate(parts) for parts in zip(*stats))
        notices += shift_notices(
            "", {"the predicted images": (means, stds)}, detector.training_intensity
        )
    train_formats = detector.fit_info_.formats
    notices += format_notices("predicted ", image_formats(files), train_formats)
    if detector.colour_scale is None and drawn.rows:
        notices.append(
            "this model was saved before defectscope fixed a colour scale at fit time: the "
            "overlays of this call share a scale from this call's own maps (re-fit to fix it)"
        )
    rows = []
    for i, (rel, file) in enumerate(zip(names, files)):
        frame = frames.get(Path(file))
        where = {
            "index": i,
            "path": str(frame.video) if frame else str(file),
            "name": rel,
            "frame": frame.index if frame else "",
            "time_s": round(frame.seconds, 3) if frame and frame.seconds is not None else "",
        }
        if i in errors:
            rows.append({**where, **error_fields(errors[i])})
        else:
            rows.append({**where, **drawn.rows[i], "error": ""})
    header = list(rows[0])
    cells = ([json.dumps(r[k]) if k == "regions" else r[k] for k in header] for r in rows)
    write_csv(out / "predictions.csv", header, cells)
    plain = [
        {k: None if isinstance(v, float) and v != v else v for k, v in r.items()} for r in rows
    ]
    write_text(out / "predictions.json", json.dumps(plain, indent=2))  # NaN is not JSON: null
    if drawn.sheet:
        title = f"the {len(drawn.sheet)} highest scores (threshold {t:.4g})"
        save_png(tile_sheet(drawn.sheet, title), out / "most_anomalous.png")
    meta = {
        "command": list(command or []),
        "defectscope_version": __version__,
        "started": started,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **detector.identity(),
        "threshold_used": t,
        "threshold_given": threshold,
        "colour_scale": list(drawn.scale),
        "images": len(files),
        "failed": drawn.failed,
        "errors": len(errors),
        "notices": notices,
    }
    write_meta(out, meta)
    return rows, notices
