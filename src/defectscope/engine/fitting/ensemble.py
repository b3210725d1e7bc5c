"""A score-normalised ensemble of fitted detectors: ``defectscope.Ensemble.of(models)``,
``defectscope ensemble RUN RUN ...`` and ``fit --auto``'s combination of its best candidates.

Each member's scores are put on one scale by its own out-of-fold good scores: their median
is subtracted and the result divided by their spread (interquartile range / 1.349, the
standard deviation of a normal distribution with that range; the median absolute deviation
where the quartiles tie). An image's ensemble score is the mean of its members' normalised
scores, its map the mean of their normalised maps. The threshold is chosen by the members'
rule (``threshold_rule``, ``max_false_reject``) from the combined out-of-fold good scores and
synthetic-defect scores, so the ensemble states an expected false-reject rate and catch rate
as any fitted model does.

Combining per image needs the members to have scored the same things: the same training
images in the same folds, the same synthetic defects (made from the decoded images, so the
same input shape, seed, batch size and synthetic count). :meth:`Ensemble.of` checks it from
the fit records and refuses, in one line, members that differ. An image is decoded once at
the shared input shape and every member scores it.

A model file holds each member's tensors under ``m<i>.`` and each member's header; it loads,
predicts, evaluates, calibrates, serves, runs on Ray and exports (one ONNX graph computing
every member) as any model. ``update`` is not built for ensembles: a clear error says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.loader import ImageInput
from defectscope.engine.rules.operating import (
    check_fit_info,
    check_threshold_source,
    checked_threshold,
    choose,
)
from defectscope.engine.rules.record import FitInfo
from defectscope.engine.scoring.scorer import Scorer
from defectscope.errors import ConfigError, ModelFileError

NAME = "ensemble"
#: the fewest and most members an ensemble takes
MIN_MEMBERS, MAX_MEMBERS = 2, 8
#: what the fit records must agree on for per-image combination (besides the input shape)
PAIRED = (
    "seed",
    "batch_size",
    "synthetic",
    "threshold_rule",
    "max_false_reject",
    "threshold_quantile",
)
NORMALISATION = (
    "each member's score minus the median of its out-of-fold good scores, divided by their "
    "interquartile range / 1.349; the ensemble's score is the mean over members"
)


def spread_of(good: np.ndarray) -> tuple[float, float]:
    """``(median, spread)`` of out-of-fold good scores: the spread is their interquartile
    range / 1.349, else 1.4826 x their median absolute deviation, else 1e-6 x |median| (or 1):
    always > 0."""
    good = np.asarray(good, dtype=np.float64)
    median = float(np.median(good))
    q1, q3 = np.quantile(good, [0.25, 0.75])
    spread = float(q3 - q1) / 1.349
    if not spread > 0:
        spread = 1.4826 * float(np.median(np.abs(good - median)))
    if not spread > 0:
        spread = max(abs(median) * 1e-6, 1e-12) if median else 1.0
    return median, spread


@dataclass(frozen=True)
class EnsembleConfig:
    """What a file's ``config`` holds for an ensemble: the members' detector names and the
    shared input shape (each member's own config is in its header)."""

    members: tuple[str, ...]
    input_shape: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        return {"members": list(self.members), "input_shape": list(self.input_shape)}


class Ensemble(Scorer):
    """Fitted detectors whose normalised scores are averaged; build one with :meth:`of`.

    Attributes:
        members: the fitted estimators.
        norms: ``(median, spread)`` of each member's out-of-fold good scores.
        threshold_: the pass/fail threshold on the ensemble's (normalised) scale.
        fit_info_: the combined record: threshold source and operating point, scales, the
            members' figures under ``ensemble``.
    """

    name = NAME

    def __init__(
        self,
        members: Sequence[Any],
        norms: Sequence[tuple[float, float]],
        threshold: float,
        fit_info: FitInfo,
    ) -> None:
        self.members = list(members)
        self.norms = [(float(m), float(s)) for m, s in norms]
        self.threshold_ = float(threshold)
        self.fit_info_ = fit_info
        shape = tuple(self.members[0].input_shape)
        self.config_ = EnsembleConfig(tuple(m.name for m in self.members), shape)

    # -- building -------------------------------------------------------------------------------
    @classmethod
    def of(cls, members: Sequence[Any], *, labels: Sequence[str] | None = None) -> Ensemble:
        """The ensemble of fitted ``members`` (estimators fitted on the same images with out-of-
        fold scores). ``labels`` name them in the record (default: their detector names).

        Raises:
            ConfigError: fewer than 2 or more than 8 members, a member that is not a fitted
                estimator with kept out-of-fold scores (an exported file, an ensemble, a
                calibrated or updated model), or members that disagree on input size, images,
                folds, seed, batch size, synthetic count or threshold rule; one line each.
        """
        from defectscope.engine.fitting.estimator import score_scale

        members = list(members)
        if not MIN_MEMBERS <= len(members) <= MAX_MEMBERS:
            raise ConfigError(
                f"an ensemble takes {MIN_MEMBERS} to {MAX_MEMBERS} fitted models; got "
                f"{len(members)}"
            )
        labels = list(labels) if labels is not None else [m.name for m in members]
        if len(labels) != len(members):
            raise ConfigError(f"{len(labels)} labels for {len(members)} ensemble members")
        kept = [_kept_scores(m, label) for m, label in zip(members, labels)]
        _check_paired(members, labels, kept)
        norms = [spread_of(good) for good, _ in kept]
        good = combine([g for g, _ in kept], norms)
        synthetic = None if kept[0][1] is None else combine([s for _, s in kept], norms)
        _, engine = members[0].options()
        point = choose(
            good,
            synthetic,
            rule=engine.threshold_rule,
            quantile=engine.threshold_quantile,
            max_false_reject=engine.max_false_reject,
        )
        first = members[0].fit_info_
        source = first.threshold_source or {}
        info = {
            "threshold_source": {
                "rule": point.description + " (of the members' normalised mean)",
                "n_out_of_fold": len(good),
                "folds": source.get("folds"),
                "operating_point": point.to_dict(),
                "scores": {
                    "good": [float(x) for x in good],
                    "synthetic": None if synthetic is None else [float(x) for x in synthetic],
                },
                "threshold": point.threshold,
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            "score_scale": score_scale(good, point.threshold),
            "colour_scale": _colour_scale(members, norms),
            # the image score is the members' mean, not the combined map's maximum
            "threshold_on_map": False,
            "shards": 1,
            "intensity": first.intensity,
            "formats": first.formats,
            "bit_depth": first.bit_depth,
            "precision": first.precision,
            "ensemble": {
                "members": [
                    {"label": label, "detector": m.name, "median": med, "spread": spr}
                    for label, m, (med, spr) in zip(labels, members, norms)
                ],
                "normalisation": NORMALISATION,
            },
        }
        return cls(members, norms, point.threshold, FitInfo.from_dict(info))

    # -- what every scorer provides -------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:  # type: ignore[override]
        return self.config_.input_shape

    def options(self):
        """``(config, engine options)``: the ensemble's config and its first member's engine
        options (how images are batched and decoded)."""
        return self.config_, self.members[0].options()[1]

    def get_params(self) -> dict[str, Any]:
        """Every member's options (what a run's ``params`` records)."""
        return {"members": [{"detector": m.name, **m.get_params()} for m in self.members]}

    def check_fitted(self) -> None:
        for member in self.members:
            member.check_fitted()

    def record_auto(self, record: dict[str, Any]) -> None:
        """Keep what ``fit --auto`` tried and why it chose this ensemble."""
        self.fit_info_ = self.fit_info_.replace(auto=record)

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, maps)`` of decoded uint8 images at :attr:`input_shape`: the mean of the
        members' normalised scores and maps."""
        scores, maps = None, None
        for member, (median, spread) in zip(self.members, self.norms):
            s, m = member.score_batch(batch)
            s = (s.astype(np.float64) - median) / spread
            m = (m.astype(np.float64) - median) / spread
            scores = s if scores is None else scores + s
            maps = m if maps is None else maps + m
        n = len(self.members)
        return (scores / n).astype(np.float32), (maps / n).astype(np.float32)

    def _score_batches(
        self, images: list[ImageInput], desc: str
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray, np.ndarray]]:
        self.check_fitted()
        _, engine = self.options()
        return self._decoded_batches(
            images, desc, self.score_batch, engine.batch_size, engine.num_workers, engine.progress
        )

    def update(self, images, *, defective=()) -> dict[str, Any]:
        raise ConfigError(
            "an ensemble cannot take new images without a refit (update is built for one "
            "PaDiM or PatchCore model); update its members and combine them again with "
            "`defectscope ensemble`, or fit again"
        )

    # -- files ----------------------------------------------------------------------------------
    def saved_state(self) -> dict[str, Any]:
        """Each member's tensors under ``m<i>.``."""
        return {
            f"m{i}.{key}": value
            for i, member in enumerate(self.members)
            for key, value in member.saved_state().items()
        }

    def header(self) -> dict[str, Any]:
        from defectscope.engine.persistence.files import model_header

        return {
            "detector": NAME,
            "config": {
                **self.config_.to_dict(),
                "headers": [model_header(m) for m in self.members],
            },
            "engine": {},
            "fitted": {"threshold": self.threshold_, **self.fit_info_.to_dict()},
        }

    def save(self, path: str | Path) -> Path:
        """Write the ensemble to one ``.safetensors`` file (atomically); returns its path."""
        from defectscope.engine.persistence.files import write_model

        self.check_fitted()
        self.model_file_ = write_model(path, self.header(), self.saved_state())
        for member in self.members:
            member.model_file_ = self.model_file_
        return self.model_file_

    @classmethod
    def from_saved(
        cls, file: Path, header: dict[str, Any], read_tensors, overrides: dict[str, Any]
    ) -> Ensemble:
        """The ensemble a model file describes (its header checksum-checked by ``read_header``):
        each member restored from its own header and tensors, then the ensemble's record."""
        from defectscope.engine.fitting.estimator import ESTIMATORS

        config = header["config"]
        headers = config.get("headers")
        try:
            if not (isinstance(headers, list) and MIN_MEMBERS <= len(headers) <= MAX_MEMBERS):
                raise ValueError(f"{MIN_MEMBERS} to {MAX_MEMBERS} member headers expected")
            if config.get("members") != [h.get("detector") for h in headers]:
                raise ValueError("its member list does not match the members' headers")
            fitted = {k: v for k, v in header["fitted"].items() if k != "threshold"}
            threshold = checked_threshold(header["fitted"]["threshold"])
            check_threshold_source(fitted.get("threshold_source"), threshold)
            check_fit_info(header["fitted"])
            norms = _saved_norms(fitted.get("ensemble"), len(headers))
        except (ConfigError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ModelFileError(
                f"{file} has an invalid ensemble record ({exc}); it was edited, or a newer "
                "defectscope wrote it: re-run `defectscope ensemble` or `fit --auto`"
            ) from exc
        tensors = read_tensors()
        prefixes = [f"m{i}." for i in range(len(headers))]
        stray = [k for k in tensors if not k.startswith(tuple(prefixes))]
        if stray:
            raise ModelFileError(f"{file}: tensor {stray[0]!r} belongs to no ensemble member")
        members = []
        for prefix, sub in zip(prefixes, headers):
            name = sub.get("detector")
            if name not in ESTIMATORS:
                raise ModelFileError(f"{file}: ensemble member {name!r} is not a detector")
            own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
            members.append(ESTIMATORS[name].from_saved(file, sub, lambda own=own: own, overrides))
        if len({tuple(m.input_shape) for m in members}) != 1 or list(
            members[0].input_shape
        ) != list(config.get("input_shape", [])):
            raise ModelFileError(f"{file}: its ensemble members disagree on the input shape")
        ensemble = cls(members, norms, threshold, FitInfo.from_dict(fitted))
        ensemble.model_file_ = file
        return ensemble

    # -- export ---------------------------------------------------------------------------------
    def torch_module(self):
        """The members' PyTorch modules and norms as one module (what export traces)."""
        import torch

        class Mean(torch.nn.Module):
            def __init__(self, modules, norms) -> None:
                super().__init__()
                self.members = torch.nn.ModuleList(modules)
                self.norms = norms

            def forward(self, images: torch.Tensor):
                scores, maps = 0.0, 0.0
                for module, (median, spread) in zip(self.members, self.norms):
                    s, m = module(images)
                    scores = scores + (s - median) / spread
                    maps = maps + (m - median) / spread
                n = len(self.norms)
                return scores / n, maps / n

        return Mean([m.torch_module() for m in self.members], self.norms).eval()


def _kept_scores(member: Any, label: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The out-of-fold good and synthetic scores a member's fit kept, or ConfigError."""
    if isinstance(member, Ensemble) or not hasattr(member, "score_batch"):
        raise ConfigError(
            f"ensemble member {label} is a {type(member).__name__}: members are fitted models "
            "(.safetensors files), not exported files or ensembles"
        )
    member.check_fitted()
    source = member.fit_info_.threshold_source or {}
    kept = source.get("scores")
    if not isinstance(kept, dict) or kept.get("good") is None:
        raise ConfigError(
            f"ensemble member {label} has no out-of-fold scores in its record (a calibrated "
            "model, or one fitted without folds): combine models as `fit` wrote them"
        )
    if member.fit_info_.lineage:
        raise ConfigError(
            f"ensemble member {label} was updated after its fit: its scores no longer pair "
            "with the other members'; combine models as `fit` wrote them"
        )
    good = np.asarray(kept["good"], dtype=np.float64)
    synthetic = kept.get("synthetic")
    return good, None if synthetic is None else np.asarray(synthetic, dtype=np.float64)


def _check_paired(members: list[Any], labels: list[str], kept) -> None:
    """ConfigError unless every member scored the same images and synthetic defects."""
    first, name = members[0], labels[0]
    shape = tuple(first.input_shape)
    for member, label, (good, syn) in zip(members[1:], labels[1:], kept[1:]):
        if tuple(member.input_shape) != shape:
            raise ConfigError(
                f"ensemble members disagree on input size: {name} takes {shape[1]}x{shape[0]} "
                f"(width x height), {label} {member.input_shape[1]}x{member.input_shape[0]}; "
                "fit them with the same --image-size and --image-height"
            )
        if member.fit_info_.intensity != first.fit_info_.intensity:
            raise ConfigError(
                f"ensemble members {name} and {label} were fitted on different images; "
                "fit every member on the same category"
            )
        for key in PAIRED:
            ours, theirs = _option(first, key), _option(member, key)
            if ours != theirs:
                raise ConfigError(
                    f"ensemble members disagree on {key}: {name} {ours!r}, {label} {theirs!r}; "
                    "fit every member with the same value"
                )
        folds = [(m.fit_info_.threshold_source or {}).get("folds") for m in (first, member)]
        if folds[0] != folds[1] or len(good) != len(kept[0][0]):
            raise ConfigError(
                f"ensemble members {name} and {label} scored their training images in different "
                f"folds ({folds[0]} and {folds[1]}, {len(kept[0][0])} and {len(good)} images): "
                "their scores do not pair; fit them with the same threshold_folds"
            )
        if (syn is None) != (kept[0][1] is None) or (
            syn is not None and len(syn) != len(kept[0][1])
        ):
            raise ConfigError(
                f"ensemble members {name} and {label} scored different synthetic defects; fit "
                "them with the same synthetic count"
            )


def _option(member: Any, key: str) -> Any:
    """A member's detector or engine option ``key``."""
    config, engine = member.options()
    return {**config.to_dict(), **engine.to_dict()}.get(key)


def combine(parts: Sequence[np.ndarray], norms) -> np.ndarray:
    """The mean of each member's ``parts`` normalised by its ``(median, spread)``."""
    return np.mean([(p - m) / s for p, (m, s) in zip(parts, norms)], axis=0)


def _colour_scale(members: Sequence[Any], norms) -> list[float]:
    """The members' colour scales on the ensemble's scale, averaged: heatmaps run from a good
    part's typical pixel to twice its hottest, as each member's do."""
    low, high = 0.0, 0.0
    for member, (median, spread) in zip(members, norms):
        scale = member.colour_scale or (median, median + 2 * spread)
        low += (scale[0] - median) / spread
        high += (scale[1] - median) / spread
    n = len(members)
    low, high = low / n, high / n
    if not high > low:
        high = low + 1.0
    return [float(low), float(high)]


def _saved_norms(record: Any, n: int) -> list[tuple[float, float]]:
    """The members' ``(median, spread)`` from a file's ``ensemble`` record, checked."""
    if not isinstance(record, dict) or not isinstance(record.get("members"), list):
        raise ValueError("its ensemble record is missing")
    entries = record["members"]
    if len(entries) != n:
        raise ValueError(f"{len(entries)} member norms for {n} members")
    out = []
    for i, entry in enumerate(entries):
        median, spread = entry.get("median"), entry.get("spread")
        if not (
            all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                for v in (median, spread)
            )
            and spread > 0
        ):
            raise ValueError(
                f"member {i}'s median and spread must be finite numbers, spread > 0; got "
                f"{median!r:.20} and {spread!r:.20}"
            )
        out.append((float(median), float(spread)))
    return out
