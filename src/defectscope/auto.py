"""A label-free choice of configuration: fit a few candidate configurations, rank them by how
well each separates synthetic defects from good parts, keep the winner (``fit --auto``,
``defectscope.auto_fit``). A workflow over the estimators, above the engine: it names the
detectors it tries, which the engine never does.

Every candidate is an ordinary fit (:meth:`Detector.fit` with ``lighting_probe``): each
training image is scored out of fold, synthetic defects made from the training images
(:mod:`defectscope.data.anomalies`) are scored by the same fold models, and so is every
out-of-fold image under a dimmer and a brighter light (:data:`estimator.LIGHTING_GAINS`). A
candidate's **ranking AUROC** is the AUROC of its synthetic-defect scores against both sets of
good scores: it rewards a configuration that finds defects and does not mistake a change of
light for one. No label and no test image is read.

The candidates, tried in this order within the time budget (the first is the default fit, so
a budget that allows one fit gives the default):

1. PatchCore with its defaults;
2. PatchCore at the training images' aspect ratio (only where they are not square), about as
   many patches as the default;
3. PaDiM with its defaults;
4. PatchCore scoring the mean distance to the 3 nearest bank patches;
5. PatchCore on the stride-8 and stride-16 stages' neighbours ``blocks.2`` + ``blocks.3``;
6. PatchCore without the lighting correction.

Then the score-normalised ensemble of two candidates
(:class:`~defectscope.engine.fitting.ensemble.Ensemble`) is ranked the same way: of the
candidates whose scores pair (the same input shape and folds), the two best-ranked (the pair
with the highest sum where several input shapes have two). It needs no fit: it combines the two
fits' kept out-of-fold, synthetic and lighting-probe scores. Where no two candidates pair it
is recorded as passed over, saying why.

A candidate replaces the best so far only when its ranking AUROC is higher by more than
:data:`MARGIN` (about the standard error of an AUROC of 200 defects against 200 good scores):
without evidence beyond noise, the earlier (more conventional) configuration stays. The
winner is an ordinary fitted model: save, load, export, serve and Ray take it as any other;
``fit_info_.auto`` records every candidate's figures and why the winner won.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.errors import ConfigError, DefectscopeError
from defectscope.results import AUTO_FAILED, AUTO_UNPAIRED, skipped_reason

log = logging.getLogger(__name__)

#: a later candidate must beat the best so far by more than this ranking AUROC
MARGIN = 0.005
#: without ``budget_s``: the candidates may take this many times the first candidate's fit. That
#: fit scores the relit images too (about 1.25 plain default fits on tire: 45 s against 36 s),
#: so 4 of them are about 5 default fits (the issue's bound)
BUDGET_FITS = 4.0
#: how many of the best-ranked candidates the ensemble candidate combines
ENSEMBLE_OF = 2
#: the options a user may set for an automatic fit: every engine option and the seed; the
#: detector's own options are what ``auto`` chooses
SHARED = ("seed",)


@dataclass(frozen=True)
class Candidate:
    """One configuration ``auto`` may choose."""

    label: str
    model: str
    params: dict[str, Any] = field(default_factory=dict)
    #: expected fit time relative to the default fit (for the budget)
    cost: float = 1.0


def aspect_kept(height: int, width: int, area: int = 320 * 320, step: int = 32) -> tuple[int, int]:
    """``(height, width)``, multiples of ``step``, with about ``area`` pixels and the aspect
    ratio of a ``height x width`` image (tire's 512 x 384 -> 384 x 288)."""
    ratio = height / width
    w = max(step, round(math.sqrt(area / ratio) / step) * step)
    h = max(step, round(w * ratio / step) * step)
    return h, w


def candidates(image_shape: tuple[int, int] | None = None) -> list[Candidate]:
    """The candidate configurations, in the order they are tried; ``image_shape`` (height,
    width) of the training images adds the aspect-kept PatchCore where they are not square."""
    out = [Candidate("patchcore (defaults)", "patchcore")]
    if image_shape is not None:
        height, width = image_shape
        if abs(height / width - 1) > 0.1:
            h, w = aspect_kept(height, width)
            out.append(
                Candidate(
                    f"patchcore {w}x{h} (aspect kept)",
                    "patchcore",
                    {"image_size": w, "image_height": h},
                    cost=(h * w) / (320 * 320),
                )
            )
    out += [
        Candidate("padim (defaults)", "padim", cost=0.7),
        Candidate("patchcore k_nearest 3", "patchcore", {"k_nearest": 3}),
        Candidate("patchcore layers blocks.2+3", "patchcore", {"layers": ("blocks.2", "blocks.3")}),
        Candidate("patchcore illumination none", "patchcore", {"illumination": "none"}),
    ]
    return out


def ranking_auroc(good: np.ndarray, lit: np.ndarray | None, synthetic: np.ndarray) -> float:
    """AUROC of ``synthetic`` defect scores against the out-of-fold ``good`` scores and the
    same images under changed light (``lit``)."""
    from defectscope.engine.rules.operating import auroc_of

    pool = good if lit is None else np.concatenate([good, lit])
    return auroc_of(pool, synthetic)


def chosen_options(options: Mapping[str, Any]) -> list[str]:
    """The names in ``options`` that ``auto`` chooses itself (a user may not set them)."""
    from defectscope.engine.rules.settings import ENGINE_NAMES

    return sorted(k for k in options if k not in ENGINE_NAMES and k not in SHARED)


def _check_options(options: Mapping[str, Any]) -> None:
    chosen = chosen_options(options)
    if chosen:
        raise ConfigError(
            "auto chooses the detector and its options itself; drop "
            + ", ".join(chosen)
            + " (or fit that detector without auto)"
        )
    if options.get("synthetic", 1) == 0:
        raise ConfigError("auto ranks configurations by synthetic defects; synthetic=0 leaves none")


def _image_shape(paths: Sequence[Path]) -> tuple[int, int] | None:
    """``(height, width)`` most training images have (None when none can be read)."""
    from collections import Counter

    from PIL import Image

    sizes: Counter = Counter()
    for path in paths[:64]:
        try:
            with Image.open(path) as image:
                sizes[image.size[::-1]] += 1
        except (OSError, ValueError):
            continue
    return sizes.most_common(1)[0][0] if sizes else None


def auto_fit(
    data,
    *,
    budget_s: float | None = None,
    candidates_: Sequence[Candidate] | None = None,
    on_candidate: Callable[[dict[str, Any], Any], None] | None = None,
    ensemble: bool = True,
    **options: Any,
):
    """Fit the candidates on ``data`` (a category folder, a Category or image files) within
    ``budget_s`` seconds and return the winner, a fitted estimator whose ``fit_info_.auto``
    records the choice. ``options``: engine options and ``seed``, shared by every candidate.
    ``on_candidate(record, detector)`` is called as each candidate finishes (``detector``:
    the fitted candidate, or None for one the budget skipped or that failed to fit).
    ``ensemble``: after the candidates, also rank the score-normalised ensemble of the two
    best-ranked ones whose scores pair (:class:`~defectscope.engine.fitting.ensemble.Ensemble`;
    no fit, it combines their kept scores); it is chosen only by the same margin.

    The first candidate always runs, whatever the budget (without a fit there is nothing to
    return); a later one starts only when its expected time fits in what is left. Without
    ``budget_s`` the budget is :data:`BUDGET_FITS` times the first fit's time.
    """
    from defectscope.engine.fitting.estimator import make_detector, training_paths

    if budget_s is not None and not (
        isinstance(budget_s, (int, float))
        and not isinstance(budget_s, bool)
        and math.isfinite(budget_s)
        and budget_s > 0
    ):
        raise ConfigError(f"budget_s must be a number of seconds > 0, got {budget_s!r}")
    _check_options(options)
    paths = training_paths(data)
    pool = list(candidates_) if candidates_ is not None else candidates(_image_shape(paths))
    if not pool:
        raise ConfigError("auto needs at least one candidate configuration")
    for c in pool:  # every candidate's options are valid before the first fit starts
        make_detector(c.model, {**options, **c.params}).options()

    start = time.perf_counter()
    records: list[dict[str, Any]] = []
    #: per pairing (input shape, folds): the ENSEMBLE_OF best-ranked fits so far, best first
    fitted: dict[tuple, list[tuple[dict[str, Any], Any]]] = {}
    best = None
    best_record: dict[str, Any] | None = None
    unit = None  # seconds of a cost-1 fit, from the first candidate
    for i, c in enumerate(pool):
        elapsed = time.perf_counter() - start
        if unit is not None:
            limit = budget_s if budget_s is not None else BUDGET_FITS * unit * pool[0].cost
            expected = unit * c.cost
            if elapsed + expected > limit:
                records.append(
                    {
                        "label": c.label,
                        "model": c.model,
                        "params": _jsonable(c.params),
                        "skipped": f"expected {expected:.0f} s; {max(0.0, limit - elapsed):.0f} "
                        f"s of the {limit:.0f} s budget left",
                    }
                )
                if on_candidate:
                    on_candidate(records[-1], None)
                continue
        detector = make_detector(c.model, {**options, **c.params})
        t0 = time.perf_counter()
        try:
            detector.fit(data, lighting_probe=True)
        except DefectscopeError as exc:
            if best is None:  # the default configuration failed: the data is the problem
                raise
            # a later candidate that cannot fit these images (its memory, its input size) is
            # recorded and passed over; the default already stands
            records.append(
                {
                    "label": c.label,
                    "model": c.model,
                    "params": _jsonable(c.params),
                    "skipped": f"{AUTO_FAILED}{exc}",
                }
            )
            if on_candidate:
                on_candidate(records[-1], None)
            continue
        seconds = time.perf_counter() - t0
        if unit is None:
            unit = seconds / c.cost
        record = _record(c, detector, seconds)
        records.append(record)
        if on_candidate:
            on_candidate(record, detector)
        if best_record is None or record["ranking_auroc"] > best_record["ranking_auroc"] + MARGIN:
            best, best_record = detector, record
        key = _pairing(detector)
        fitted[key] = _top(fitted.get(key, []), (record, detector))
        del detector
        log.info("auto: candidate %d/%d %s: %s", i + 1, len(pool), c.label, record)

    if ensemble:
        found = _ensemble_candidate(fitted, records, on_candidate)
        if found is not None and found[1]["ranking_auroc"] > best_record["ranking_auroc"] + MARGIN:
            best, best_record = found
        del found
    del fitted

    assert best is not None and best_record is not None
    total = time.perf_counter() - start
    best.record_auto(
        {
            "chosen": best_record["label"],
            "rule": (
                "the highest ranking AUROC (synthetic defects against out-of-fold good scores "
                f"and the same images at x{' and x'.join(map(str, _gains()))} light); a later "
                f"candidate must beat the best so far by more than {MARGIN}"
            ),
            "budget_s": None if budget_s is None else float(budget_s),
            "seconds": round(total, 3),
            "candidates": records,
        }
    )
    return best


def _ensemble_candidate(
    fitted: dict[tuple, list],
    records: list[dict[str, Any]],
    on_candidate: Callable[[dict[str, Any], Any], None] | None,
) -> tuple[Any, dict[str, Any]] | None:
    """The ensemble of the best pair of ``fitted`` and its record, appended to ``records``
    (and reported to ``on_candidate``); None, recorded as passed over with the reason, where
    no two candidates pair (nothing where fewer than two ran)."""
    if sum(map(len, fitted.values())) < ENSEMBLE_OF:
        return None
    pair = _best_pair(fitted)
    t0 = time.perf_counter()
    try:
        if pair is None:
            raise ConfigError(
                "no two candidates share an input size and folds, so their scores do not pair"
            )
        combined = _ensemble(pair)
    except ConfigError as exc:
        members = (
            pair
            or sorted(
                (e for group in fitted.values() for e in group),
                key=lambda e: -e[0]["ranking_auroc"],
            )[:ENSEMBLE_OF]
        )
        records.append(
            {
                "label": _ensemble_label(members),
                "model": "ensemble",
                "params": {"members": [r["label"] for r, _ in members]},
                "skipped": f"{AUTO_UNPAIRED}{exc}",
            }
        )
        if on_candidate:
            on_candidate(records[-1], None)
        return None
    members = {"members": [r["label"] for r, _ in pair]}
    record = _record(
        Candidate(_ensemble_label(pair), "ensemble", members),
        combined,
        time.perf_counter() - t0,
    )
    records.append(record)
    if on_candidate:
        on_candidate(record, combined)
    return combined, record


def _top(fitted: list, entry: tuple[dict[str, Any], Any]) -> list:
    """The :data:`ENSEMBLE_OF` best-ranked of ``fitted`` and ``entry``, best first (earlier
    candidates first among equals)."""
    ranked = sorted([*fitted, entry], key=lambda e: -e[0]["ranking_auroc"])
    return ranked[:ENSEMBLE_OF]


def _pairing(detector) -> tuple:
    """What candidates must share for their scores to pair in an ensemble: the input shape
    and the folds of the out-of-fold scores."""
    source = detector.fit_info_.threshold_source or {}
    return (tuple(detector.input_shape), source.get("folds"), source.get("n_out_of_fold"))


def _best_pair(fitted: dict[tuple, list]) -> list | None:
    """Of the pairings with :data:`ENSEMBLE_OF` fits, the fits whose ranking AUROCs sum
    highest (the first such on a tie), or None."""
    full = [group for group in fitted.values() if len(group) == ENSEMBLE_OF]
    if not full:
        return None
    return max(full, key=lambda group: sum(r["ranking_auroc"] for r, _ in group))


def _ensemble_label(fitted: list) -> str:
    return "ensemble of " + " + ".join(r["label"] for r, _ in fitted)


def _ensemble(fitted: list):
    """The ensemble of the fitted candidates, with its members' lighting-probe scores
    combined as its other scores are (ConfigError where they cannot be paired)."""
    from defectscope.engine.fitting.ensemble import Ensemble, combine

    members = [d for _, d in fitted]
    combined = Ensemble.of(members, labels=[r["label"] for r, _ in fitted])
    lit = [getattr(d, "lighting_scores_", None) for d in members]
    if all(x is not None for x in lit) and len({len(x) for x in lit}) == 1:
        combined.lighting_scores_ = combine(lit, combined.norms)
    return combined


def _gains() -> tuple[float, ...]:
    from defectscope.engine.fitting.estimator import LIGHTING_GAINS

    return LIGHTING_GAINS


def _jsonable(params: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in params.items()}


def _record(c: Candidate, detector, seconds: float) -> dict[str, Any]:
    from defectscope.verdict import fails

    kept = detector.fit_info_.threshold_source["scores"]  # the out-of-fold scores scored
    good = np.asarray(kept["good"], dtype=np.float64)
    lit = getattr(detector, "lighting_scores_", None)
    syn = kept["synthetic"]
    point = detector.fit_info_.operating_point
    ranking = ranking_auroc(good, lit, np.asarray(syn, dtype=np.float64))
    light = None if lit is None else float(np.mean(fails(lit, detector.threshold_)))
    return {
        "label": c.label,
        "model": c.model,
        "params": _jsonable(c.params),
        "ranking_auroc": round(float(ranking), 6),
        "synthetic_auroc": round(float(point["synthetic_auroc"]), 6),
        "synthetic_catch_rate": round(float(point["synthetic_catch_rate"]), 6),
        "lighting_false_reject": None if light is None else round(light, 6),
        "seconds": round(seconds, 3),
    }


def candidate_line(r: Mapping[str, Any]) -> str:
    """One candidate of an ``auto`` record in words: its figures, or why it has none."""
    if "skipped" in r:
        what, why = skipped_reason(r["skipped"])
        return f"{r['label']}: {what} ({why})"
    lit = r.get("lighting_false_reject")
    return (
        f"{r['label']}: ranking AUROC {r['ranking_auroc']:.3f} (synthetic "
        f"{r['synthetic_auroc']:.3f}, catches {r['synthetic_catch_rate']:.0%}"
        + (f", rejects {lit:.0%} of good parts at x0.9/x1.1 light" if lit is not None else "")
        + f"), {r['seconds']:.0f} s"
    )


def summary(record: Mapping[str, Any]) -> str:
    """One line per candidate of an ``auto`` record, the winner marked ``*``."""
    lines = [
        ("* " if r["label"] == record["chosen"] and "skipped" not in r else "  ")
        + candidate_line(r)
        for r in record["candidates"]
    ]
    return "\n".join([f"auto chose {record['chosen']} in {record['seconds']:.0f} s:", *lines])
