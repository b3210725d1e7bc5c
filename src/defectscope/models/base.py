"""The small base class shared by every detector, and its typed results."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from defectscope.data.loader import ImageInput, iter_batches
from defectscope.data.mvtec import Category, load_category
from defectscope.errors import ConfigError, DataError, NotFittedError
from defectscope.progress import progress_bar


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image.

    Attributes:
        score: image anomaly score; higher is more anomalous.
        is_anomalous: ``score > threshold`` (the threshold chosen at fit time without test labels).
        anomaly_map: ``(H, W)`` float32 per-pixel scores at the model's input size.
        path: the image file, when the input was a path.
    """

    score: float
    is_anomalous: bool
    anomaly_map: np.ndarray
    path: str | None = None


@dataclass(frozen=True)
class ScoredImages:
    """Scores and maps of many images: ``scores (N,)`` and ``maps (N, H, W)`` float32."""

    scores: np.ndarray
    maps: np.ndarray


def training_paths(data: str | Path | Category | Sequence[str | Path]) -> list[Path]:
    """The defect-free training images of a category folder, a Category or a list of files."""
    if isinstance(data, Category):
        return list(data.train_paths)
    if isinstance(data, (str, Path)):
        return list(load_category(data).train_paths)
    paths = [Path(p) for p in data]
    if not paths:
        raise DataError("fit got an empty list of images; pass defect-free training images")
    return paths


class Detector(ABC):
    """Base of every detector: ``fit`` on good images, then score; higher means more anomalous.

    Subclasses implement :meth:`_fit` (which must set ``threshold_``), :meth:`anomaly_maps`,
    and the save/load hooks :meth:`_state_tensors` and :meth:`_set_state`; :meth:`get_params`
    reads the constructor's arguments back from the attributes of the same names.
    """

    name: ClassVar[str]
    #: names of what ``fit`` learns; all must be set for the model to count as fitted
    fitted_attributes: ClassVar[tuple[str, ...]] = ("threshold_",)

    image_size: int
    batch_size: int
    num_workers: int
    progress: bool

    # -- fitting -------------------------------------------------------------------------------
    def fit(self, data: str | Path | Category | Sequence[str | Path]) -> Detector:
        """Learn what good looks like from defect-free images; returns ``self``.

        Args:
            data: a category folder (its ``train/good`` is used), a :class:`Category`, or a list
                of image files.
        """
        self._validate()
        paths = training_paths(data)
        if len(paths) < 3:
            raise DataError(f"fit needs at least 3 defect-free training images, got {len(paths)}")
        self._fit(paths)
        return self

    def _validate(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 32:
            raise ConfigError(f"image_size must be an int >= 32, got {self.image_size!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"batch_size must be a positive int, got {self.batch_size!r}")

    @abstractmethod
    def _fit(self, paths: list[Path]) -> None: ...

    def _check_threshold_quantile(self) -> None:
        """For detectors that set their threshold with :meth:`_threshold`."""
        if not 0.5 <= self.threshold_quantile <= 1.0:
            raise ConfigError(
                f"threshold_quantile must be in [0.5, 1], got {self.threshold_quantile!r}"
            )

    def _threshold(self, holdout_scores: np.ndarray) -> float:
        """Pass/fail threshold from scores of held-out good images, without any test label."""
        return float(np.quantile(holdout_scores, self.threshold_quantile))

    # -- inference -----------------------------------------------------------------------------
    def check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless ``fit`` (or ``load``) has run."""
        if any(getattr(self, a, None) is None for a in self.fitted_attributes):
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit first "
                "(or defectscope.load a saved model)"
            )

    @abstractmethod
    def anomaly_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``images: (B, 3, S, S)`` float in 0..1 -> ``(B, S, S)`` float32 anomaly maps."""

    def image_scores(self, maps: torch.Tensor) -> torch.Tensor:
        """``(B, H, W) -> (B,)`` image scores; the maximum of the map unless overridden."""
        return maps.flatten(1).amax(dim=1)

    def iter_scores(
        self, images: Sequence[ImageInput], *, desc: str = "scoring"
    ) -> Iterator[tuple[range, torch.Tensor, torch.Tensor]]:
        """Yield ``(indices, scores (b,), maps (b, S, S))`` batch by batch, in input order."""
        self.check_fitted()
        batches = iter_batches(images, self.image_size, self.batch_size, self.num_workers)
        with progress_bar(len(images), desc, enabled=self.progress) as bar:
            for idx, batch in batches:
                with torch.inference_mode():
                    maps = self.anomaly_maps(batch)
                    scores = self.image_scores(maps)
                bar.update(len(idx))
                yield idx, scores, maps

    def score(self, images: Sequence[ImageInput]) -> ScoredImages:
        """Scores and anomaly maps of many images (paths or uint8 arrays)."""
        scores = np.empty(len(images), dtype=np.float32)
        maps = np.empty((len(images), self.image_size, self.image_size), dtype=np.float32)
        for idx, batch_scores, batch_maps in self.iter_scores(images):
            scores[idx.start : idx.stop] = batch_scores.numpy()
            maps[idx.start : idx.stop] = batch_maps.numpy()
        return ScoredImages(scores, maps)

    def predict(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """One :class:`Prediction` per image, with pass/fail at the fitted threshold."""
        scored = self.score(images)
        return [
            Prediction(
                score=float(s),
                is_anomalous=bool(s > self.threshold_),
                anomaly_map=m,
                path=str(item) if isinstance(item, (str, Path)) else None,
            )
            for item, s, m in zip(images, scored.scores, scored.maps)
        ]

    # -- persistence ---------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """Constructor arguments, as stored (tuples as lists, so that they serialise to JSON)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        values = {n: getattr(self, n) for n in names}
        return {n: list(v) if isinstance(v, tuple) else v for n, v in values.items()}

    @abstractmethod
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        """What ``fit`` learned, as named tensors."""

    @abstractmethod
    def _set_state(self, tensors: dict[str, torch.Tensor], fitted: dict[str, Any]) -> None:
        """Restore what ``fit`` learned from :meth:`_state_tensors` and :meth:`fitted_info`."""

    def fitted_info(self) -> dict[str, Any]:
        """Scalar results of ``fit`` (threshold, counts), saved in the model's JSON config."""
        return {"threshold_": self.threshold_}

    def save(self, path: str | Path) -> Path:
        """Write the model to one ``.safetensors`` file (atomically); returns its path."""
        from defectscope.io import save_detector

        return save_detector(self, path)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"
