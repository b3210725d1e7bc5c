"""Setting a model's threshold from labelled images: the best balance of catches and false
rejects (the default), best F1, or a target false-reject rate (good parts rejected) or escape
rate (defective parts passed).

The default weighs the two error rates equally (it maximises the catch rate minus the
false-reject rate, Youden's J, the same threshold as the best balanced accuracy), so it does
not depend on how many of the labelled parts are defective. Best F1 does: a labelled set with
more defective parts than good ones (tire's test split: 87 and 25) moves its threshold down
until it rejects most good parts, though a line sees far fewer defects than good parts."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.data.mvtec import Category, load_category
from defectscope.errors import ConfigError, DataError
from defectscope.verdict import fails


@dataclass(frozen=True)
class Outcome:
    """What a threshold does on labelled scores (a verdict is ``score > threshold``)."""

    threshold: float
    caught: int  # defective parts failed
    defective: int
    rejected: int  # good parts failed
    good: int

    @property
    def escape_rate(self) -> float:
        return 1 - self.caught / self.defective if self.defective else 0.0

    @property
    def false_reject_rate(self) -> float:
        return self.rejected / self.good if self.good else 0.0

    @property
    def f1(self) -> float:
        flagged = self.caught + self.rejected
        return 2 * self.caught / (flagged + self.defective) if flagged + self.defective else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "caught": self.caught,
            "defective": self.defective,
            "rejected": self.rejected,
            "good": self.good,
            "f1": round(self.f1, 6),  # 4 places printed as 3 could round twice (0.6515 -> 0.651)
            "escape_rate": round(self.escape_rate, 4),
            "false_reject_rate": round(self.false_reject_rate, 4),
        }

    def sentence(self) -> str:
        return (
            f"at threshold {self.threshold:.4g}: caught {self.caught} of {self.defective} "
            f"defective parts, rejected {self.rejected} of {self.good} good parts "
            f"(F1 {self.f1:.3f})"
        )


def outcome(labels: np.ndarray, scores: np.ndarray, threshold: float) -> Outcome:
    labels = np.asarray(labels, dtype=bool)
    flagged = np.asarray(fails(scores, threshold))
    return Outcome(
        float(threshold),
        int((flagged & labels).sum()),
        int(labels.sum()),
        int((flagged & ~labels).sum()),
        int((~labels).sum()),
    )


def _midpoints(values: np.ndarray) -> np.ndarray:
    """Thresholds between consecutive distinct values, and one below the lowest."""
    unique = np.unique(values)
    below = unique[0] - max(abs(unique[0]) * 1e-6, 1e-6)
    return np.concatenate([[below], (unique[:-1] + unique[1:]) / 2, [unique[-1]]])


def choose_threshold(
    labels: np.ndarray,
    scores: np.ndarray,
    *,
    false_reject_rate: float | None = None,
    escape_rate: float | None = None,
    best_f1: bool = False,
) -> tuple[float, str]:
    """The threshold for a rule, and the rule in words.

    With no rule: the threshold of the largest catch rate minus false-reject rate (balanced:
    independent of how many labelled parts are defective; ties: the highest such threshold,
    fewest rejects). ``best_f1``: the threshold of best F1 (ties likewise).
    ``false_reject_rate=r``: the lowest threshold that rejects at most a fraction ``r`` of the
    good parts. ``escape_rate=r``: the highest threshold that passes at most a fraction ``r``
    of the defective parts.
    """
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if (false_reject_rate is not None) + (escape_rate is not None) + bool(best_f1) > 1:
        raise ConfigError(
            "give one rule: a target false-reject rate, a target escape rate or best F1"
        )
    good, bad = np.sort(scores[~labels]), np.sort(scores[labels])
    if false_reject_rate is not None:
        if not 0 <= false_reject_rate < 1:
            raise ConfigError(f"false-reject rate must be in [0, 1), got {false_reject_rate}")
        if not len(good):
            raise DataError("a target false-reject rate needs good (test/good) images")
        allowed = int(np.floor(false_reject_rate * len(good) + 1e-9))
        return float(good[len(good) - allowed - 1]), (
            f"false-reject rate <= {false_reject_rate:g} ({allowed} of {len(good)} good parts)"
        )
    if escape_rate is not None:
        if not 0 <= escape_rate < 1:
            raise ConfigError(f"escape rate must be in [0, 1), got {escape_rate}")
        if not len(bad):
            raise DataError("a target escape rate needs defective images")
        allowed = int(np.floor(escape_rate * len(bad) + 1e-9))
        target = bad[allowed]  # every defective score >= this one must fail
        lower = scores[scores < target]
        threshold = (
            (target + lower.max()) / 2 if len(lower) else target - max(abs(target), 1) * 1e-6
        )
        return float(threshold), (
            f"escape rate <= {escape_rate:g} ({allowed} of {len(bad)} defective parts)"
        )
    name = "best F1" if best_f1 else "balanced catches and false rejects"
    if not len(good) or not len(bad):
        raise DataError(f"{name} needs both good and defective images")
    candidates = _midpoints(scores)
    results = [outcome(labels, scores, t) for t in candidates]
    if best_f1:
        value = np.array([r.f1 for r in results])
    else:
        value = np.array([r.caught / r.defective - r.rejected / r.good for r in results])
    best = np.flatnonzero(value >= value.max() - 1e-12)[-1]
    return float(candidates[best]), name


#: the rows of the trade-off table calibrate shows before it writes: (label, rule arguments)
TRADE_OFF_RULES = (
    ("balanced (default)", {}),
    ("best F1", {"best_f1": True}),
    ("false rejects <= 1%", {"false_reject_rate": 0.01}),
    ("false rejects <= 5%", {"false_reject_rate": 0.05}),
    ("false rejects <= 10%", {"false_reject_rate": 0.1}),
    ("false rejects <= 20%", {"false_reject_rate": 0.2}),
    ("escapes <= 5%", {"escape_rate": 0.05}),
)
#: calibrate warns when its threshold rejects more than this fraction of the good parts
MOST_GOOD = 0.5


def trade_off(
    labels: np.ndarray, scores: np.ndarray, extra: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """What each of :data:`TRADE_OFF_RULES` (and the ``extra`` named thresholds) would do on
    these labelled scores, lowest threshold first: ``{"rule", **Outcome.to_dict()}`` each."""
    rows = []
    for label, rule in TRADE_OFF_RULES:
        try:
            threshold, _ = choose_threshold(labels, scores, **rule)
        except DataError:
            continue
        rows.append({"rule": label, **outcome(labels, scores, threshold).to_dict()})
    for label, threshold in (extra or {}).items():
        rows.append({"rule": label, **outcome(labels, scores, threshold).to_dict()})
    return sorted(rows, key=lambda r: r["threshold"])


def trade_off_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The trade-off table as text (at most 80 characters a line)."""
    out = [f"{'rule':22} {'threshold':>10} {'caught':>11} {'rejected':>11} {'F1':>6}"]
    for r in rows:
        out.append(
            f"{r['rule'][:22]:22} {r['threshold']:10.4g} "
            f"{str(r['caught']) + '/' + str(r['defective']):>11} "
            f"{str(r['rejected']) + '/' + str(r['good']):>11} {r['f1']:6.3f}"
        )
    return out


def calibrate(
    detector: Any,
    data: str | Path | Category,
    *,
    false_reject_rate: float | None = None,
    escape_rate: float | None = None,
    best_f1: bool = False,
) -> tuple[Outcome, Outcome, dict[str, Any]]:
    """Score a category's labelled test split and set ``detector``'s threshold by the rule.

    Returns the outcome at the old and at the new threshold, and the ``threshold_source``
    record stored in the model (rule, data, counts, date, previous threshold). The caller saves.
    """
    category = data if isinstance(data, Category) else load_category(data, require_test=True)
    labels = np.array([s.is_anomalous for s in category.test_samples])
    scores = detector.score([s.path for s in category.test_samples]).scores
    before = outcome(labels, scores, detector.threshold_)
    threshold, rule = choose_threshold(
        labels,
        scores,
        false_reject_rate=false_reject_rate,
        escape_rate=escape_rate,
        best_f1=best_f1,
    )
    after = outcome(labels, scores, threshold)
    table = trade_off(labels, scores, {"model's before": before.threshold, "chosen": threshold})
    source = {
        "rule": f"calibrated on labelled images: {rule}",
        "threshold": threshold,
        "data": str(category.root),
        "good": after.good,
        "defective": after.defective,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "previous_threshold": detector.threshold_,
        "previous_source": detector.fit_info_.threshold_source,
        "achieved": after.to_dict(),
        "trade_off": table,
    }
    detector.set_threshold(threshold, source)
    return before, after, source
