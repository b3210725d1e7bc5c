"""The label-free operating point, judged on labelled test splits (issue 22's study).

    .venv/bin/python benchmarks/operating_point.py --data ../shared/datasets --seeds 0 1 2 3

For every category, detector and seed: one default fit (every training image scored out of
fold, synthetic defects made from the training images), then the labelled test split. Beside
each other: what the fit expected (false-reject rate on good parts, catch rate and AUROC on
synthetic defects) and what the test split shows (false-reject rate on its good parts, catch rate
and AUROC on its real defects), the F1 at the model's own threshold against the best F1 any
threshold reaches, and the F1 the quantile rule (0.95 of the same out-of-fold scores) would give.
Nothing here chooses anything: the rule and its defaults were fixed before this was run.
Rows are appended to benchmarks/results/operating_point.jsonl; a table is printed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["bottle", "screw", "tire"])
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "operating_point.jsonl")
    )
    args = parser.parse_args()

    from defectscope.data import load_category
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.engine.rules.operating import RULES, auroc_of, choose
    from defectscope.metrics import best_f1, f1_at

    rows = []
    for seed in args.seeds:
        for detector in args.detectors:
            for name in args.categories:
                category = load_category(Path(args.data) / name)
                start = time.perf_counter()
                model = make_detector(detector, {"seed": seed}).fit(category)
                fit_s = time.perf_counter() - start
                samples = category.test_samples
                labels = np.array([s.is_anomalous for s in samples], dtype=bool)
                scores = model.score([s.path for s in samples]).scores
                point = model.fit_info_.operating_point
                t = model.threshold_
                best, _ = best_f1(labels, scores)
                by_rule = {}
                oof = model.out_of_fold_scores_
                for rule in RULES:
                    other = choose(
                        oof[np.isfinite(oof)], model.synthetic_scores_, rule=rule
                    ).threshold
                    by_rule[f"f1_{rule}"] = f1_at(labels, scores, other)
                    by_rule[f"test_false_reject_{rule}"] = float((scores[~labels] > other).mean())
                    by_rule[f"test_catch_{rule}"] = float((scores[labels] > other).mean())
                row = {
                    "category": name,
                    "detector": detector,
                    "seed": seed,
                    "fit_s": round(fit_s, 1),
                    "image_auroc": auroc_of(scores[~labels], scores[labels]),
                    "synthetic_auroc": point["synthetic_auroc"],
                    "f1_own": f1_at(labels, scores, t),
                    "f1_best": best,
                    **by_rule,
                    "rule": point["rule"],
                    "expected_false_reject": point["expected_false_reject"],
                    "test_false_reject": float((scores[~labels] > t).mean()),
                    "synthetic_catch": point["synthetic_catch_rate"],
                    "test_catch": float((scores[labels] > t).mean()),
                    "n_good_test": int((~labels).sum()),
                    "n_defective_test": int(labels.sum()),
                }
                rows.append(row)
                with open(args.out, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
    head = (
        "| category | detector | seed | AUROC test / synthetic | F1 best | F1 budget / "
        "synthetic / quantile (ratio to best) | false rejects expected / test | "
        "catch synthetic / test |"
    )
    print(head)
    print("|" + "---|" * 8)
    for r in rows:
        ratios = " / ".join(
            f"{r[f'f1_{rule}']:.3f} ({r[f'f1_{rule}'] / r['f1_best']:.2f})" for rule in RULES
        )
        print(
            f"| {r['category']} | {r['detector']} | {r['seed']} | {r['image_auroc']:.3f} / "
            f"{r['synthetic_auroc']:.3f} | {r['f1_best']:.3f} | {ratios} | "
            f"{r['expected_false_reject']:.2f} / {r['test_false_reject']:.2f} | "
            f"{r['synthetic_catch']:.2f} / {r['test_catch']:.2f} |"
        )


if __name__ == "__main__":
    main()
