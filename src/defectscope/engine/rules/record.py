"""The fit record: what a fit learnt besides its tensors and its threshold, as one typed,
frozen value (``Detector.fit_info_``), checked whenever one is made.

Fields the engine writes have their own typed attributes; the detector's own figures
(``n_train``, ``bank_size``, ``history`` ...) are kept as its ``fit_info()`` returned them, in
``detector``. A record is changed only by :meth:`FitInfo.replace`, which makes a checked copy.
It also reads as the JSON mapping a model file's ``fitted`` header holds (``record["auto"]``,
``record.get("formats")``, ``{**record}``), key for key in the order fit wrote it, so files
written from it are the files written before it existed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from defectscope.engine.rules.operating import check_fit_info

#: the fields the engine writes, in the order a fit writes them (after the detector's own)
ENGINE_FIELDS = (
    "score_scale",
    "colour_scale",
    "threshold_on_map",
    "threshold_source",
    "shards",
    "intensity",
    "formats",
    "bit_depth",
    "auto",
    "lineage",
    "precision",
)


def used_precision(record: Mapping[str, Any]) -> str:
    """The precision a fit record (or a model file's ``fitted`` header) says the features are
    computed in: fp32 where it says nothing (files written before the option)."""
    return (record.get("precision") or {}).get("used", "fp32")


@dataclass(frozen=True)
class FitInfo(Mapping[str, Any]):
    """One fitted model's record. ``None``: not recorded (a supervised detector has no scales,
    an export keeps only what scoring needs, older files lack later fields).

    Attributes:
        score_scale: ``{"good_median", "spread"}``: the fixed scale of normalised scores.
        colour_scale: ``(low, high)`` of every heatmap, fixed at fit time.
        threshold_on_map: whether an image's score is its map's maximum.
        threshold_source: the rule that set the threshold, its operating point, the
            out-of-fold and synthetic scores it was chosen from; calibrate replaces it.
        shards: how many shards the fit ran in.
        intensity: the training images' brightness summary (for the shift check).
        formats: the training images' sizes and modes (for the format notices).
        bit_depth: the bit depth every 16/32-bit image of this source is scaled by.
        auto: what ``fit --auto`` tried and why it chose this model.
        lineage: one entry per ``update``.
        precision: the feature extractor's arithmetic: ``{"requested", "used"}`` and, where
            they differ or ``auto`` chose, why (:mod:`defectscope.engine.runtimes.precision`).
        detector: the detector's own figures, as its ``fit_info()`` returned them.
        present: the engine fields the record holds (a field may hold ``None``, as
            ``bit_depth`` does for 8-bit images); the others are left out of :meth:`to_dict`.
    """

    score_scale: dict[str, float] | None = None
    colour_scale: tuple[float, float] | None = None
    threshold_on_map: bool | None = None
    threshold_source: dict[str, Any] | None = None
    shards: int | None = None
    intensity: dict[str, Any] | None = None
    formats: dict[str, Any] | None = None
    bit_depth: int | None = None
    auto: dict[str, Any] | None = None
    lineage: list[dict[str, Any]] | None = None
    precision: dict[str, Any] | None = None
    detector: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] = frozenset()

    @classmethod
    def from_dict(cls, *parts: Mapping[str, Any]) -> FitInfo:
        """The record of ``parts`` merged left to right (a module's ``fit_info()``, then what
        the engine adds; or a model file's ``fitted`` header). Raises
        :class:`~defectscope.errors.ConfigError` where a field has the wrong type or range."""
        merged: dict[str, Any] = {}
        for part in parts:
            merged.update(part.to_dict() if isinstance(part, FitInfo) else part)
        merged.pop("threshold", None)  # the threshold is the estimator's own attribute
        merged = copy.deepcopy(merged)
        check_fit_info(merged)
        engine = {k: merged[k] for k in ENGINE_FIELDS if k in merged}
        if engine.get("colour_scale") is not None:
            low, high = engine["colour_scale"]
            engine["colour_scale"] = (float(low), float(high))
        return cls(
            **engine,
            detector={k: v for k, v in merged.items() if k not in ENGINE_FIELDS},
            present=frozenset(engine),
        )

    def replace(self, **changes: Any) -> FitInfo:
        """A checked copy with ``changes`` (engine fields or detector figures) set."""
        return FitInfo.from_dict(self.to_dict(), changes)

    def to_dict(self) -> dict[str, Any]:
        """The record as a model file's ``fitted`` header holds it (a deep copy)."""
        return {key: copy.deepcopy(self[key]) for key in self}

    @property
    def n_train(self) -> int | None:
        """How many images the model learnt from (updates included)."""
        return self.detector.get("n_train")

    @property
    def history(self) -> list[float] | None:
        """The training loss per epoch, for detectors trained by gradient descent."""
        return self.detector.get("history")

    @property
    def precision_used(self) -> str:
        """The precision the model's features are computed in (fp32 for older files)."""
        return used_precision(self)

    @property
    def operating_point(self) -> dict[str, Any] | None:
        """The label-free operating point the threshold was chosen at, if it was."""
        return (self.threshold_source or {}).get("operating_point")

    # -- the mapping view: a model file's ``fitted`` header --------------------------------------
    def __getitem__(self, key: str) -> Any:
        if key in ENGINE_FIELDS:
            if key not in self.present:
                raise KeyError(key)
            value = getattr(self, key)
            return list(value) if key == "colour_scale" and value else value
        return self.detector[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.detector
        yield from (k for k in ENGINE_FIELDS if k in self.present)

    def __len__(self) -> int:
        return len(self.detector) + len(self.present)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self.to_dict() == (
                other.to_dict() if isinstance(other, FitInfo) else dict(other)
            )
        return NotImplemented


#: the empty record: a scorer with nothing recorded
EMPTY = FitInfo()
