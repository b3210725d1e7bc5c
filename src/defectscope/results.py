"""Typed results shared by the engine and the reports (no torch, no I/O)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from defectscope.verdict import fails

METRICS = (
    "image_auroc",
    "image_f1_best",
    "image_f1_fixed",
    "pixel_auroc",
    "pixel_f1_best",
    "pixel_f1_fixed",
    "aupro_30",
    "image_accuracy_fixed",
)
METRIC_LABELS = {
    "image_auroc": "image AUROC",
    "image_f1_best": "image F1 (best threshold on test, optimistic)",
    "image_f1_fixed": "image F1 (threshold fitted without test labels)",
    "pixel_auroc": "pixel AUROC",
    "pixel_f1_best": "pixel F1 (best threshold on test, optimistic)",
    "pixel_f1_fixed": "pixel F1 (threshold fitted without test labels)",
    "aupro_30": "AUPRO up to FPR 0.3",
    "image_accuracy_fixed": "image accuracy (threshold fitted without test labels)",
    "shortcut_auroc": "image AUROC of the best trivial score (mean intensity, intensity spread, "
    "or their distance from training): '!' before its name when it matches or beats the "
    "detector",
}


@dataclass(frozen=True)
class Prediction:
    """The verdict on one image.

    Attributes:
        score: image anomaly score; higher is more anomalous.
        is_anomalous: ``score > threshold`` (the model's pass/fail threshold).
        anomaly_map: ``(H, W)`` float32 per-pixel scores at the model's input size.
        path: the image file, when the input was a path.
        normalized_score: the score on the model's fixed [0, 1] scale, threshold at 0.5.
        threshold: the threshold the verdict was taken at.
    """

    score: float
    is_anomalous: bool
    anomaly_map: np.ndarray
    path: str | None = None
    normalized_score: float | None = None
    threshold: float | None = None


@dataclass(frozen=True)
class ScoredImages:
    """Scores and maps of many images: ``scores (N,)`` and ``maps (N, H, W)`` float32."""

    scores: np.ndarray
    maps: np.ndarray


@dataclass(frozen=True)
class ImageResult:
    """One test image's outcome."""

    path: str
    defect_type: str
    is_anomalous: bool
    score: float
    predicted_anomalous: bool


@dataclass(frozen=True)
class CategoryResult:
    """Metrics and per-image outcomes of one detector on one category.

    ``metrics`` maps each name in :data:`METRICS` to a float, or None where it cannot be computed
    (pixel metrics without masks); ``notices`` says why. ``example_maps`` (image index ->
    ``(S, S)`` map) and ``example_masks`` (or None without ground truth) hold only the images of
    :func:`pick_examples`; they and ``curves`` (thinned ``(x, y)`` of ``image_roc``,
    ``pixel_roc`` and ``pro``) are kept in memory for the figures and are not serialised.
    Built once, complete: use :func:`dataclasses.replace` for a variant.
    """

    category: str
    detector: str
    metrics: dict[str, float | None]
    threshold: float
    images: list[ImageResult]
    notices: list[str] = field(default_factory=list)
    fit_seconds: float | None = None
    evaluate_seconds: float | None = None
    n_train: int | None = None
    example_maps: dict[int, np.ndarray] = field(default_factory=dict, repr=False)
    example_masks: dict[int, np.ndarray] | None = field(default=None, repr=False)
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)
    colour_scale: tuple[float, float] | None = None
    model: dict[str, Any] | None = None
    #: synthetic defects the fit chose its threshold with: ``(image, mask, map, kind, score)``
    #: each, for the report's grid (in memory only, like ``example_maps``)
    synthetic_examples: list[tuple] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        skip = ("example_maps", "example_masks", "curves", "images", "synthetic_examples")
        out = {k: v for k, v in asdict(self).items() if k not in skip}
        out["n_test"] = len(self.images)
        out["images"] = [asdict(r) for r in self.images]
        out["summary"] = outcome_summary(out["images"])
        return out


def outcome_summary(images: list[dict[str, Any]]) -> dict[str, Any]:
    """At the threshold used: the confusion counts, and per defect type how many were caught,
    their mean score and the image AUROC of that type against the good images.

    ``images`` are :class:`ImageResult` dicts (as in ``results.json``).
    """
    from defectscope.metrics import auroc

    good = [r for r in images if not r["is_anomalous"]]
    bad = [r for r in images if r["is_anomalous"]]
    out: dict[str, Any] = {
        "caught": sum(r["predicted_anomalous"] for r in bad),
        "missed": sum(not r["predicted_anomalous"] for r in bad),
        "rejected": sum(r["predicted_anomalous"] for r in good),
        "passed": sum(not r["predicted_anomalous"] for r in good),
        "defect_types": [],
    }
    good_scores = [r["score"] for r in good]
    for kind in dict.fromkeys(r["defect_type"] for r in bad):
        own = [r for r in bad if r["defect_type"] == kind]
        scores = [r["score"] for r in own]
        value = None
        if good_scores:
            labels = np.r_[np.zeros(len(good_scores), bool), np.ones(len(scores), bool)]
            value = float(auroc(labels, np.r_[good_scores, scores]))
        out["defect_types"].append(
            {
                "defect_type": kind,
                "images": len(own),
                "caught": sum(r["predicted_anomalous"] for r in own),
                "mean_score": float(np.mean(scores)),
                "image_auroc": value,
            }
        )
    return out


def pick_examples(
    images: list[ImageResult], threshold: float, per_group: int = 3
) -> list[tuple[str, int]]:
    """``(group, index)`` of the images an example figure shows: the most confident detections,
    the missed defects (lowest scores first) and the false alarms (highest first)."""
    scores = np.array([r.score for r in images])
    labels = np.array([r.is_anomalous for r in images])
    flagged = fails(scores, threshold)
    order = np.argsort(-scores, kind="stable")
    groups = [
        ("detected", [i for i in order if labels[i] and flagged[i]][:per_group]),
        ("missed", [i for i in order[::-1] if labels[i] and not flagged[i]][:per_group]),
        ("false alarm", [i for i in order if not labels[i] and flagged[i]][:per_group]),
    ]
    return [(name, int(i)) for name, idx in groups for i in idx]


#: how an ``auto`` record marks a candidate whose fit failed: its ``skipped`` starts with this
AUTO_FAILED = "failed: "
#: the start of an ensemble candidate's ``skipped`` text where its members cannot be paired
AUTO_UNPAIRED = "unpaired: "


def skipped_reason(skipped: str) -> tuple[str, str]:
    """An ``auto`` candidate's ``skipped`` text as ``(what happened, why)``: "could not fit"
    for a fit that failed, "could not combine" for an ensemble whose members' scores do not
    pair, "not tried" for one the budget left out."""
    if skipped.startswith(AUTO_FAILED):
        return "could not fit", skipped[len(AUTO_FAILED) :]
    if skipped.startswith(AUTO_UNPAIRED):
        return "could not combine", skipped[len(AUTO_UNPAIRED) :]
    return "not tried", skipped


def comparison_text(compared: dict[str, Any]) -> str:
    """How each lower precision's out-of-fold scores compared with fp32's, in words."""
    return "; ".join(
        f"{p}: rank correlation {a['rank_correlation']}, shift {a['shift']} on {a['images']} "
        "out-of-fold images"
        for p, a in compared.items()
        if a.get("rank_correlation") is not None
    )


def precision_line(record: dict[str, Any] | None) -> str | None:
    """One line on a fit's precision record, or None for a plain fp32 fit."""
    if not record or (record.get("requested", "fp32") == "fp32" and record.get("used") == "fp32"):
        return None
    requested, used = record.get("requested"), record.get("used")
    if record.get("reason"):
        return f"precision {requested} cannot run here ({record['reason']}): features in fp32"
    compared = record.get("agreement") or {}
    figures = comparison_text(compared)
    if requested == "auto":
        verdict = (
            f"{used}, whose scores agree with fp32"
            if used != "fp32"
            else "fp32, as no lower precision's scores agree with it"
        )
        return f"precision auto: {verdict}" + (f" ({figures})" if figures else "")
    own = compared.get(used) or {}
    said = "agree" if own.get("agrees") else "DISAGREE"
    return f"features in {used} (the statistics from fp32 features)" + (
        f"; its scores {said} with fp32's ({figures})" if figures else ""
    )
