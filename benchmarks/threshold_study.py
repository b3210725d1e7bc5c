"""Which label-free threshold rule works best: candidate rules computed from the held-out good
training images' scores, judged on the labelled test split (F1, false-reject and escape rates).

    .venv/bin/python benchmarks/threshold_study.py --data ../shared/datasets --detector patchcore

Fits the detector once per category (default options: 10% of the training images, at most 32,
held out and never fitted on), scores the held-out images and the test split, then applies every
rule to the held-out scores. Prints a table and writes benchmarks/results/threshold_study.jsonl.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def rules(held: np.ndarray) -> dict[str, float]:
    median = float(np.median(held))
    mad = 1.4826 * float(np.median(np.abs(held - median)))
    top = float(held.max())
    return {
        "quantile 0.99 (default)": float(np.quantile(held, 0.99)),
        "max": top,
        "quantile 0.95": float(np.quantile(held, 0.95)),
        "mean + 3 std": float(held.mean() + 3 * held.std(ddof=1)),
        "median + 4 MAD": median + 4 * mad,
        "max + 25% of (max - median)": top + 0.25 * (top - median),
        "max + 50% of (max - median)": top + 0.5 * (top - median),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["bottle", "screw", "tire"])
    parser.add_argument("--detector", default="patchcore")
    args = parser.parse_args()

    from defectscope.data import load_category
    from defectscope.engine.fitting.estimator import holdout_split, make_detector
    from defectscope.engine.workflows.calibration import choose_threshold, outcome

    out = Path(__file__).parent / "results" / "threshold_study.jsonl"
    rows = []
    for name in args.categories:
        category = load_category(Path(args.data) / name)
        model = make_detector(args.detector, {}).fit(category)
        _, engine = model.options()
        held_idx, _ = holdout_split(len(category.train_paths), engine.holdout, model.seed)
        held = model.score([category.train_paths[i] for i in held_idx]).scores
        labels = np.array([s.is_anomalous for s in category.test_samples])
        scores = model.score([s.path for s in category.test_samples]).scores
        best, _ = choose_threshold(labels, scores)
        candidates = {**rules(held), "best F1 on test (oracle)": best}
        for rule, t in candidates.items():
            o = outcome(labels, scores, t)
            row = {
                "category": name,
                "detector": args.detector,
                "held_out": len(held),
                "rule": rule,
                **o.to_dict(),
            }
            rows.append(row)
            print(
                f"{name:7} {rule:30} t={t:9.4g} F1={o.f1:.3f} "
                f"false-reject={o.false_reject_rate:.3f} escape={o.escape_rate:.3f}",
                flush=True,
            )
    with open(out, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    print("\nmean over categories:")
    for rule in dict.fromkeys(r["rule"] for r in rows):
        own = [r for r in rows if r["rule"] == rule]
        print(
            f"{rule:30} F1={np.mean([r['f1'] for r in own]):.3f} "
            f"false-reject={np.mean([r['false_reject_rate'] for r in own]):.3f} "
            f"escape={np.mean([r['escape_rate'] for r in own]):.3f}"
        )


if __name__ == "__main__":
    main()
