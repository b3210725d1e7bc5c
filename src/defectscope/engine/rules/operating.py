"""The label-free operating point: a threshold chosen from out-of-fold good scores and
synthetic-defect scores, with the rates it is expected to give (torch-free).

A model's threshold decides every part, and most users run the one it comes with. Every
training image is scored by a model that did not see it (its out-of-fold score), and synthetic
defects made from each fold's images (:mod:`defectscope.data.anomalies`) are scored by the same
models; :func:`choose` then picks the threshold by a rule recorded in the model:

- ``budget`` (default): the lowest threshold that rejects at most ``max_false_reject`` of the
  out-of-fold good scores: as many catches as the false-reject budget allows (Neyman-Pearson).
  Synthetic defects then say what it is expected to catch.
- ``synthetic``: the best F1 of synthetic defects against the good images, the two classes
  weighted equally (a line's defect rate is unknown at fit time), among the thresholds within
  the budget; of equal F1 the lowest threshold. It is only as good as the synthetic defects
  are like real ones: where they are easier, it sits at the top of the good scores and lets
  subtle real defects pass (measured: benchmarks/README.md). Without synthetic scores it falls
  back to ``budget`` and says so.
- ``quantile``: the ``quantile`` of the good images' scores (the rule of earlier releases,
  now over every training image rather than 32 held out).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from defectscope.errors import ConfigError
from defectscope.verdict import fails

RULES = ("budget", "synthetic", "quantile")
#: below this many good scores the expected false-reject rate is too uncertain to trust alone
FEW_GOOD = 8


@dataclass(frozen=True)
class OperatingPoint:
    """A threshold and what it is expected to do, recorded in the model's fit info."""

    threshold: float
    rule: str
    #: the rule in words, for the report, ``/model`` and ``threshold_source``
    description: str
    n_good: int
    n_synthetic: int
    #: the fraction of out-of-fold good scores above the threshold
    expected_false_reject: float
    #: its 95% Wilson interval: what the number of good images allows one to say
    false_reject_interval: tuple[float, float]
    #: the fraction of synthetic defects above the threshold (None without them)
    synthetic_catch_rate: float | None
    #: AUROC of synthetic defects against out-of-fold good scores (None without them)
    synthetic_auroc: float | None

    def __post_init__(self) -> None:
        object.__setattr__(self, "false_reject_interval", tuple(self.false_reject_interval))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["false_reject_interval"] = list(self.false_reject_interval)
        return out

    def summary(self) -> str:
        """One line: the expected rates."""
        lo, hi = self.false_reject_interval
        text = (
            f"threshold {self.threshold:.4g} ({self.rule}): expected false rejects "
            f"{self.expected_false_reject:.1%} of good parts (95% interval {lo:.1%}-{hi:.1%}, "
            f"from {self.n_good} out-of-fold scores)"
        )
        if self.synthetic_catch_rate is not None:
            text += (
                f", catches {self.synthetic_catch_rate:.1%} of {self.n_synthetic} synthetic "
                f"defects (synthetic AUROC {self.synthetic_auroc:.3f})"
            )
        return text


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (0..1 both ends for n = 0)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def auroc_of(good: np.ndarray, defective: np.ndarray) -> float:
    """The probability that a defective score exceeds a good one (ties count half):
    :func:`defectscope.metrics.auroc` of the two groups."""
    from defectscope.metrics import auroc

    labels = np.r_[np.zeros(len(good), dtype=bool), np.ones(len(defective), dtype=bool)]
    return auroc(labels, np.concatenate([good, defective]))


def choose(
    good: np.ndarray,
    synthetic: np.ndarray | None,
    *,
    rule: str = "budget",
    quantile: float = 0.95,
    max_false_reject: float = 0.1,
) -> OperatingPoint:
    """The operating point of out-of-fold ``good`` scores and ``synthetic``-defect scores.

    A part fails when its score is above the threshold. Raises ValueError on an unknown rule,
    no good scores, or scores that are not finite.
    """
    if rule not in RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; valid rules: {', '.join(RULES)}")
    good = np.asarray(good, dtype=np.float64)
    syn = np.asarray(synthetic if synthetic is not None else [], dtype=np.float64)
    if not len(good):
        raise ValueError("an operating point needs at least one out-of-fold good score")
    if not (np.isfinite(good).all() and np.isfinite(syn).all()):
        raise ValueError(
            "out-of-fold or synthetic scores are not finite: the model's options make it "
            "score images as infinite or NaN; check regularization and sigma"
        )
    note = ""
    if rule == "synthetic" and not len(syn):
        rule, note = "budget", " (no synthetic defects to choose with)"
    if rule == "synthetic":
        threshold, description = _best_f1(good, syn, max_false_reject)
    elif rule == "budget":
        ordered = np.sort(good)
        allowed = int(np.floor(max_false_reject * len(good) + 1e-9))
        threshold = float(ordered[len(ordered) - allowed - 1])
        description = (
            f"false rejects at most {max_false_reject:.0%} of {len(good)} out-of-fold good "
            f"scores{note}"
        )
    else:
        threshold = float(np.quantile(good, quantile))
        description = f"quantile {quantile} of {len(good)} out-of-fold good scores"
    rejects = int(fails(good, threshold).sum())
    catch = float(fails(syn, threshold).mean()) if len(syn) else None
    return OperatingPoint(
        threshold=float(threshold),
        rule=rule,
        description=description,
        n_good=len(good),
        n_synthetic=len(syn),
        expected_false_reject=rejects / len(good),
        false_reject_interval=wilson_interval(rejects, len(good)),
        synthetic_catch_rate=catch,
        synthetic_auroc=auroc_of(good, syn) if len(syn) else None,
    )


def _best_f1(good: np.ndarray, syn: np.ndarray, budget: float) -> tuple[float, str]:
    """The lowest threshold of the best equal-weight F1 whose false-reject rate is within
    ``budget``; candidates are the scores themselves (a score equal to it passes)."""
    candidates = np.unique(np.concatenate([good, syn]))
    good_sorted, syn_sorted = np.sort(good), np.sort(syn)
    # fraction strictly above each candidate
    frr = 1.0 - np.searchsorted(good_sorted, candidates, side="right") / len(good)
    catch = 1.0 - np.searchsorted(syn_sorted, candidates, side="right") / len(syn)
    f1 = 2 * catch / (1 + catch + frr)  # equal class weights: TP=catch, FP=frr, FN=1-catch
    allowed = frr <= budget + 1e-12
    f1 = np.where(allowed, f1, -1.0)
    best = int(np.argmax(f1))  # the first (lowest) of the maxima
    if f1[best] <= 0:  # nothing caught within the budget: the budget's own quantile
        threshold = float(candidates[allowed][0])
    else:
        threshold = float(candidates[best])
    return threshold, (
        f"best equal-weight F1 of {len(syn)} synthetic defects against {len(good)} out-of-fold "
        f"good scores, false rejects at most {budget:.0%}"
    )


def checked_threshold(value: Any, what: str = "its threshold") -> float:
    """A threshold read from a file or given by a user, as a float; ConfigError unless it is a
    finite real number (a boolean, a string, NaN or an infinity would pass or fail every
    part)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be finite, got {value!r}: every part would pass or fail")
    return float(value)


def check_threshold_source(source: Any, threshold: float) -> None:
    """ConfigError unless ``source`` (a model's ``threshold_source``) is a record whose
    ``threshold`` equals ``threshold``: a threshold edited alone does not match it."""
    if not isinstance(source, dict) or not isinstance(source.get("rule"), str):
        raise ConfigError("its threshold_source is missing or not a record with a rule")
    recorded = checked_threshold(source.get("threshold"), "threshold_source.threshold")
    if recorded != threshold:
        raise ConfigError(
            f"its threshold {threshold!r} differs from the {recorded!r} its threshold_source "
            "records (edited by hand?)"
        )
    point = source.get("operating_point")
    stated = point.get("threshold", recorded) if isinstance(point, dict) else recorded
    if stated != threshold:
        raise ConfigError(
            f"its threshold {threshold!r} differs from the {stated!r} its operating point "
            "states (edited by hand?)"
        )


#: a threshold this many score spreads (``score_scale``) from the median good score is refused:
#: fit puts it within one spread; calibrate, on labelled parts, within tens
MAX_THRESHOLD_SPREADS = 1000.0


#: what a fit record's ``precision`` may say was used (``auto`` is only ever requested)
USED_PRECISIONS = ("fp32", "int8", "bf16")


def _comparison(value: Any) -> bool:
    """One entry of a precision record's ``agreement``: how a lower precision compared."""
    return (
        isinstance(value, dict)
        and set(value) == {"images", "rank_correlation", "shift", "agrees"}
        and isinstance(value["images"], int)
        and not isinstance(value["images"], bool)
        and all(value[k] is None or _number(value[k]) for k in ("rank_correlation", "shift"))
        and isinstance(value["agrees"], bool)
    )


def _check_precision(record: Any) -> None:
    if record is None:
        return
    agreement = record.get("agreement", {}) if isinstance(record, dict) else None
    unavailable = record.get("unavailable", {}) if isinstance(record, dict) else None
    if not (
        isinstance(record, dict)
        and set(record) <= {"requested", "used", "reason", "agreement", "unavailable"}
        and record.get("used") in USED_PRECISIONS
        and record.get("requested") in (*USED_PRECISIONS, "auto")
        and isinstance(record.get("reason", ""), str)
        and isinstance(agreement, dict)
        and all(k in USED_PRECISIONS and _comparison(v) for k, v in agreement.items())
        and isinstance(unavailable, dict)
        and all(k in USED_PRECISIONS and isinstance(v, str) for k, v in unavailable.items())
    ):
        raise ConfigError(
            "precision must say which precision was requested (fp32, int8, bf16, auto), which "
            "was used (fp32, int8, bf16) and how they compared; got "
            f"{record!r:.200}"
        )


def check_fit_info(info: Any) -> None:
    """ConfigError unless the scalars a fitted model's scoring and drawing rely on have their
    types and ranges (a model file's ``fitted`` record, an export's metadata): an edited
    colour scale, score scale, bit depth or flag is refused on load, never a traceback later."""
    if not isinstance(info, dict):
        raise ConfigError("its fit record is not a mapping")

    scale = info.get("colour_scale")
    if scale is not None and not (
        isinstance(scale, list)
        and len(scale) == 2
        and all(map(_number, scale))
        and scale[0] < scale[1]
    ):
        raise ConfigError(f"colour_scale must be two finite numbers, low < high; got {scale!r}")
    spread = info.get("score_scale")
    if spread is not None and not (
        isinstance(spread, dict)
        and _number(spread.get("good_median"))
        and _number(spread.get("spread"))
        and spread["spread"] > 0
    ):
        raise ConfigError(
            f"score_scale must hold a finite good_median and spread > 0; got {spread!r}"
        )
    on_map = info.get("threshold_on_map")
    if on_map is not None and not isinstance(on_map, bool):
        raise ConfigError(f"threshold_on_map must be true or false; got {on_map!r}")
    depth = info.get("bit_depth")
    if depth is not None and not (
        isinstance(depth, int) and not isinstance(depth, bool) and 8 < depth <= 32
    ):
        raise ConfigError(f"bit_depth must be an int in 9..32 or null; got {depth!r}")
    threshold = info.get("threshold")
    if spread is not None and _number(threshold):
        distance = abs(threshold - spread["good_median"]) / spread["spread"]
        if distance > MAX_THRESHOLD_SPREADS:
            raise ConfigError(
                f"its threshold {threshold:.6g} lies {distance:.3g} spreads from the median "
                f"good score {spread['good_median']:.6g}: no fitted or calibrated threshold is "
                "that far (every part would pass, or every part fail); fit or calibrate again"
            )
    _check_intensity(info.get("intensity"))
    _check_formats(info.get("formats"))
    _check_history(info.get("history"))
    source = info.get("threshold_source")
    if isinstance(source, dict) and source.get("operating_point") is not None:
        _check_point(source["operating_point"])
    if isinstance(source, dict) and source.get("scores") is not None:
        _check_scores(source["scores"])
    if info.get("auto") is not None:
        _check_auto(info["auto"])
    _check_precision(info.get("precision"))
    lineage = info.get("lineage")
    if lineage is not None and not (
        isinstance(lineage, list) and len(lineage) <= 100_000 and all(map(_lineage_entry, lineage))
    ):
        raise ConfigError(
            "lineage must be a list of update records (date, version, previous model's and added "
            f"images' SHA-256, counts, thresholds); got {lineage!r:.200}"
        )


def _check_auto(record: Any) -> None:
    """ConfigError unless ``record`` (a model's ``fit_info_.auto``) has the shape
    :func:`defectscope.auto.auto_fit` writes: the report and ``/model`` print it."""

    def ok_candidate(r: Any) -> bool:
        if not (isinstance(r, dict) and isinstance(r.get("label"), str)):
            return False
        if "skipped" in r:
            return isinstance(r["skipped"], str)
        lit = r.get("lighting_false_reject")
        return (
            all(_number(r.get(k), 0, 1) for k in ("ranking_auroc", "synthetic_auroc"))
            and _number(r.get("synthetic_catch_rate"), 0, 1)
            and (lit is None or _number(lit, 0, 1))
            and _number(r.get("seconds"), 0)
        )

    if not (
        isinstance(record, dict)
        and isinstance(record.get("chosen"), str)
        and isinstance(record.get("rule"), str)
        and _number(record.get("seconds"), 0)
        and (record.get("budget_s") is None or _number(record["budget_s"], 0))
        and isinstance(record.get("candidates"), list)
        and 0 < len(record["candidates"]) <= 100
        and all(map(ok_candidate, record["candidates"]))
        and record["chosen"] in {r["label"] for r in record["candidates"] if "skipped" not in r}
    ):
        raise ConfigError(f"its auto record is damaged; got {record!r:.200}")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _lineage_entry(entry: Any) -> bool:
    """One record ``update`` appends to a model's lineage, with every field it writes."""

    def digests(values: Any) -> bool:
        return (
            isinstance(values, list)
            and len(values) <= 1_000_000
            and all(isinstance(v, str) and _SHA256.fullmatch(v) for v in values)
        )

    previous = entry.get("previous_model_sha256") if isinstance(entry, dict) else None
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("date"), str)
        and isinstance(entry.get("defectscope_version"), str)
        and (previous is None or (isinstance(previous, str) and bool(_SHA256.fullmatch(previous))))
        and _count(entry.get("added"))
        and digests(entry.get("added_sha256"))
        and len(entry["added_sha256"]) == entry["added"]
        and digests(entry.get("escapes_sha256"))
        and _number(entry.get("threshold_before"))
        and _number(entry.get("threshold_after"))
    )


def _check_scores(record: Any) -> None:
    """The out-of-fold good scores and synthetic-defect scores kept for ``update``."""

    def numbers(values: Any) -> bool:
        return isinstance(values, list) and len(values) <= 1_000_000 and all(map(_number, values))

    if not (
        isinstance(record, dict)
        and set(record) == {"good", "synthetic"}
        and numbers(record["good"])
        and len(record["good"]) > 0
        and (record["synthetic"] is None or numbers(record["synthetic"]))
    ):
        raise ConfigError(f"threshold_source.scores is damaged; got {record!r:.200}")


def _number(value: Any, low: float = -math.inf, high: float = math.inf) -> bool:
    """A finite int or float in ``[low, high]``; ints beyond 64 bits are no number numpy
    takes."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, float) or abs(value) < 2**63)
        and math.isfinite(value)
        and low <= value <= high
    )


def _count(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value < 2**53


def _check_intensity(record: Any) -> None:
    """The training images' grey statistics (the lighting shift check compares with them)."""
    if record is None:
        return
    if not (
        isinstance(record, dict)
        and set(record) == {"n", "mean", "mean_sd", "spread", "spread_sd"}
        and _count(record["n"], 1)
        and _number(record["mean"], 0, 65535)
        and all(_number(record[k], 0, 65535) for k in ("mean_sd", "spread", "spread_sd"))
    ):
        raise ConfigError(
            "intensity must hold n >= 1 and finite mean, mean_sd, spread, spread_sd in "
            f"[0, 65535]; got {record!r:.200}"
        )


_SIZE_KEY = re.compile(r"[1-9][0-9]{0,5}x[1-9][0-9]{0,5}")


def _check_formats(record: Any) -> None:
    """The training images' sizes and modes (the size and mode notices compare with them)."""
    if record is None:
        return
    ok = isinstance(record, dict) and set(record) == {"sizes", "modes"}
    if ok:
        sizes, modes = record["sizes"], record["modes"]
        ok = (
            isinstance(sizes, dict)
            and isinstance(modes, dict)
            and all(_SIZE_KEY.fullmatch(k) and _count(n, 1) for k, n in sizes.items())
            and all(0 < len(k) <= 16 and _count(n, 1) for k, n in modes.items())
        )
    if not ok:
        raise ConfigError(
            "formats must hold sizes {'WxH': count} and modes {'RGB': count} with counts "
            f">= 1; got {record!r:.200}"
        )


def _check_history(record: Any) -> None:
    """A trained network's per-epoch losses: lists of finite numbers by name."""
    if record is None:
        return
    if not (
        isinstance(record, dict)
        and all(
            isinstance(v, list) and len(v) <= 100_000 and all(map(_number, v))
            for v in record.values()
        )
    ):
        raise ConfigError(f"history must map names to lists of finite losses; got {record!r:.200}")


def _check_point(record: Any) -> None:
    """The operating point that fit, the report and ``/model`` state."""
    names = {f.name for f in fields(OperatingPoint)}
    ok = isinstance(record, dict) and set(record) == names
    if ok:
        interval = record["false_reject_interval"]
        ok = (
            _number(record["threshold"])
            and isinstance(record["rule"], str)
            and isinstance(record["description"], str)
            and _count(record["n_good"])
            and _count(record["n_synthetic"])
            and _number(record["expected_false_reject"], 0, 1)
            and isinstance(interval, list)
            and len(interval) == 2
            and all(_number(v, 0, 1) for v in interval)
            and all(
                record[k] is None or _number(record[k], 0, 1)
                for k in ("synthetic_catch_rate", "synthetic_auroc")
            )
        )
    if not ok:
        raise ConfigError(f"threshold_source.operating_point is damaged; got {record!r:.200}")
