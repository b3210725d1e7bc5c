"""What every scorer shares, fitted estimator or exported file: scores, maps and verdicts of many
images, batch by batch, never a NaN turned into a verdict (torch-free)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from defectscope.data.loader import ImageInput
from defectscope.engine.rules.operating import check_threshold_source, checked_threshold
from defectscope.engine.rules.record import EMPTY, FitInfo
from defectscope.errors import ConfigError, DataError, ScoringError
from defectscope.results import Prediction, ScoredImages
from defectscope.verdict import fails


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
    """One image (a path, an ``(H, W[, C])`` array or a PIL image), a folder of images, or a
    sequence of these, as a list of paths and arrays.

    A single path string or a single array is one image, never a sequence of characters or
    of rows. A folder gives its image files (recursively, sorted; a category folder its
    ``test/`` images only). PIL images become uint8 RGB arrays as files are decoded (16-bit
    by the bits they use).
    """
    from PIL import Image

    from defectscope.data.images import folder_images, to_rgb8

    if isinstance(images, (str, Path)):
        if Path(images).is_dir():
            files, _, _ = folder_images(Path(images))
            if not files:
                raise DataError(f"no image files in {images}")
            return list(files)
        return [images]
    if isinstance(images, Image.Image):
        return [np.asarray(to_rgb8(images))]
    if isinstance(images, np.ndarray):
        if images.ndim in (2, 3) and (images.ndim == 2 or images.shape[-1] in (1, 3, 4)):
            return [images]
        if images.ndim == 4:
            return list(images)
        raise DataError(
            f"an image array must be (H, W), (H, W, 3) or a batch (N, H, W, 3); got shape "
            f"{images.shape}"
        )
    out: list[ImageInput] = []
    for item in images:
        if isinstance(item, Image.Image):
            out.append(np.asarray(to_rgb8(item)))
        elif isinstance(item, (str, Path, np.ndarray)):
            out.append(item)
        else:
            raise DataError(
                f"cannot score a {type(item).__name__}: give image paths, folders, PIL images "
                "or uint8 arrays (H, W[, 3])"
            )
    return out


def _at_image_size(amap: np.ndarray, item: ImageInput) -> np.ndarray:
    """An anomaly map resized (bilinear) to the size of the image it belongs to."""
    from PIL import Image

    from defectscope.data.images import image_size

    width, height = image_size(item) if isinstance(item, (str, Path)) else item.shape[1::-1]
    if (height, width) == amap.shape:
        return amap
    resized = Image.fromarray(amap.astype(np.float32), mode="F").resize(
        (width, height), Image.Resampling.BILINEAR
    )
    return np.asarray(resized)


class Scorer(ABC):
    """Subclasses provide :meth:`_score_batches`, ``threshold_``, ``input_shape`` and ``name``."""

    name: str
    threshold_: float
    #: what the fit recorded (see :class:`~defectscope.engine.rules.record.FitInfo`)
    fit_info_: FitInfo = EMPTY
    #: ``(height, width)`` of the model's input: images are resized to it, maps have it
    input_shape: tuple[int, int]

    @abstractmethod
    def _score_batches(
        self, images: list[ImageInput], desc: str
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray, np.ndarray]]:
        """Yield ``(indices, images (b, H, W, 3) uint8, scores (b,), maps (b, H, W))``, in
        input order."""

    def check_fitted(self) -> None:
        """Raise when the scorer cannot score yet (fitted estimators override it)."""
        return None

    def _decoded_batches(
        self,
        images: list[ImageInput],
        desc: str,
        run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        num_workers: int,
        progress: bool,
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray, np.ndarray]]:
        """:meth:`_score_batches` of a scorer that scores decoded uint8 images at
        :attr:`input_shape` with ``run`` (batch -> ``(scores, maps)``)."""
        from defectscope.data.loader import iter_batches
        from defectscope.progress import progress_bar

        batches = iter_batches(images, self.input_shape, batch_size, num_workers, self.bit_depth)
        with progress_bar(len(images), desc, enabled=progress) as bar:
            for idx, batch in batches:
                scores, maps = run(batch)
                bar.update(len(idx))
                yield idx, batch, scores, maps

    def set_threshold(self, threshold: float, source: dict) -> None:
        """Set the pass/fail threshold and the record of where it came from, together
        (``calibrate``); ConfigError unless ``source`` states this threshold."""
        threshold = checked_threshold(threshold)
        check_threshold_source(source, threshold)
        self.fit_info_ = self.fit_info_.replace(threshold_source=source)
        self.threshold_ = threshold

    @property
    def training_intensity(self):
        """The :class:`~defectscope.engine.scoring.shortcuts.IntensitySummary` of the training
        images, or None (models fitted before it was recorded)."""
        from defectscope.engine.scoring.shortcuts import IntensitySummary

        return IntensitySummary.from_dict(self.fit_info_.intensity)

    def iter_scores(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        desc: str = "scoring",
        stats: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
        """Yield ``(indices, scores, maps)`` batch by batch; a non-finite score is an error.

        Args:
            stats: when given, the grey mean and spread of every image of each batch are
                appended to it (for the shortcut baselines and the shift check; free: the images
                are decoded anyway).
        """
        from defectscope.engine.scoring.shortcuts import batch_stats

        items = as_image_list(images)
        for idx, batch, scores, maps in self._score_batches(items, desc):
            if stats is not None:
                stats.append(batch_stats(batch))
            bad = np.flatnonzero(~np.isfinite(scores))
            if len(bad):
                item = items[idx.start + int(bad[0])]
                what = item if isinstance(item, (str, Path)) else f"image #{idx.start + bad[0]}"
                raise ScoringError(
                    f"the model gave a non-finite score ({scores[bad[0]]}) for {what}: the model "
                    "file or the image is damaged; no verdict is given"
                )
            yield idx, scores, maps

    def score(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        stats: list[tuple[np.ndarray, np.ndarray]] | None = None,
    ) -> ScoredImages:
        """Scores and anomaly maps of many images (paths or uint8 arrays); ``stats`` as for
        :meth:`iter_scores`."""
        items = as_image_list(images)
        scores = np.empty(len(items), dtype=np.float32)
        maps = np.empty((len(items), *self.input_shape), dtype=np.float32)
        for idx, batch_scores, batch_maps in self.iter_scores(items, stats=stats):
            scores[idx.start : idx.stop] = batch_scores
            maps[idx.start : idx.stop] = batch_maps
        return ScoredImages(scores, maps)

    def normalize(self, scores, threshold: float | None = None) -> np.ndarray:
        """Scores on the model's fixed [0, 1] scale: a logistic curve with the threshold at 0.5,
        ``threshold - spread`` at 0.1 and ``threshold + spread`` at 0.9, where the spread was fixed
        at fit time (see :func:`~defectscope.engine.fitting.estimator.fixed_scales`).

        Models saved before the scale was recorded use ``|threshold|`` as the spread.
        """
        t = float(self.threshold_ if threshold is None else threshold)
        spread = (self.fit_info_.score_scale or {}).get("spread")
        if not spread or not np.isfinite(spread) or spread <= 0:
            spread = abs(t) if np.isfinite(t) and t != 0 else 1.0
        with np.errstate(invalid="ignore", over="ignore"):
            z = np.log(9.0) * (np.asarray(scores, dtype=np.float64) - t) / spread
            unit = 1.0 / (1.0 + np.exp(-np.clip(z, -700, 700)))
        return np.nan_to_num(unit, nan=0.0)

    def identity(self) -> dict:
        """What a result must say about the model that produced it: file, SHA-256, detector,
        threshold, where the threshold came from and the precision of its features."""
        from defectscope.digest import file_sha256

        file = getattr(self, "model_file_", None) or getattr(self, "path", None)
        return {
            "model": str(file) if file else None,
            "model_sha256": file_sha256(file) if file else None,
            "detector": self.name,
            "threshold": self.threshold_,
            # without the kept out-of-fold scores: hundreds of numbers no result needs
            "threshold_source": {
                k: v for k, v in (self.fit_info_.threshold_source or {}).items() if k != "scores"
            }
            or None,
            # the features' arithmetic (fp32, int8, bf16), which the scores depend on
            "precision": self.fit_info_.precision,
        }

    @property
    def bit_depth(self) -> int | None:
        """The bit depth of the training images, by which every 16- or 32-bit image is scaled
        to 8 bits (None: they were 8-bit, or the model predates the record)."""
        return self.fit_info_.bit_depth  # an int in 9..32 or None: checked when recorded

    @property
    def colour_scale(self) -> tuple[float, float] | None:
        """``(low, high)`` of every heatmap of this model, fixed at fit time; None for models
        saved before it was recorded."""
        return self.fit_info_.colour_scale

    @property
    def threshold_on_map(self) -> bool:
        """Whether an image's score is its map's maximum, so that the map above the threshold
        marks the regions that made it fail (False for image-level detectors)."""
        return self.fit_info_.threshold_on_map is not False

    def is_anomalous(self, scores, threshold: float | None = None) -> np.ndarray:
        """The verdict rule (:func:`defectscope.verdict.fails`) at ``threshold`` (default: the
        model's): a part fails when its score is above it."""
        t = float(self.threshold_ if threshold is None else threshold)
        return np.asarray(fails(scores, t))

    def score_samples(self, images) -> np.ndarray:
        """scikit-learn's outlier-detector convention: higher is more normal (the negated
        anomaly score), so model-selection tools that expect it work."""
        return -self.score(as_image_list(images)).scores.astype(np.float64)

    def decision_function(self, images) -> np.ndarray:
        """scikit-learn's convention: negative for parts that fail at the model's threshold,
        positive for parts that pass (``threshold_ - score``)."""
        return float(self.threshold_) + self.score_samples(images)

    def predict(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        stats: list[tuple[np.ndarray, np.ndarray]] | None = None,
        map_size: str = "model",
    ) -> list[Prediction]:
        """One :class:`Prediction` per image, with pass/fail at ``threshold`` (default: the
        model's); ``stats`` as for :meth:`iter_scores`. ``map_size``: ``"model"`` (anomaly maps
        at the model's input shape) or ``"image"`` (resized to each image's own size, as
        shown: EXIF orientation applied)."""
        return list(
            self.iter_predictions(images, threshold=threshold, stats=stats, map_size=map_size)
        )

    def iter_predictions(
        self,
        images: ImageInput | Sequence[ImageInput],
        *,
        threshold: float | None = None,
        stats: list[tuple[np.ndarray, np.ndarray]] | None = None,
        map_size: str = "model",
    ) -> Iterator[Prediction]:
        """:meth:`predict`'s predictions in input order, yielded batch by batch as they are
        scored: a caller can write each while the next batch is scored, and need not hold every
        map. The arguments are checked before the first image is read."""
        if map_size not in ("model", "image"):
            raise ConfigError(f"map_size must be 'model' or 'image', got {map_size!r}")
        self.check_fitted()
        t = float(self.threshold_ if threshold is None else threshold)
        if not np.isfinite(t):
            raise ScoringError(
                f"the threshold is {t}; no verdict can be given (every part would "
                f"{'pass' if t > 0 else 'fail'}): give a finite threshold"
            )
        items = as_image_list(images)
        return self._predictions(items, t, stats, map_size)

    def _predictions(self, items, t, stats, map_size) -> Iterator[Prediction]:
        for idx, scores, maps in self.iter_scores(items, stats=stats):
            # float32, as :meth:`score` keeps them, before the verdicts and normalised scores;
            # the maps copied (as :meth:`score` copies them), so that no prediction shares a
            # buffer a module might reuse for its next batch
            scores = np.asarray(scores, dtype=np.float32)
            maps = np.array(maps, dtype=np.float32)
            normalized = self.normalize(scores, t)
            failed = self.is_anomalous(scores, t)
            batch = items[idx.start : idx.stop]
            for item, s, m, n, bad in zip(batch, scores, maps, normalized, failed):
                yield Prediction(
                    score=float(s),
                    is_anomalous=bool(bad),
                    anomaly_map=m if map_size == "model" else _at_image_size(m, item),
                    path=str(item) if isinstance(item, (str, Path)) else None,
                    normalized_score=float(n),
                    threshold=t,
                )
