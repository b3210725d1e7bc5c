"""An updated model against a refit on the enlarged training set (issue 27's third target).

    .venv/bin/python benchmarks/update_vs_refit.py --categories bottle tire

Per category and detector (default options, seed 0): fit on the training images but the last
``--added`` (in file order), fold those in with ``update``, and fit again on all of them. Both
models score the test split; printed side by side: the update's and the refit's time, the
relative difference of their scores (median and maximum over the test images), their image
AUROC and thresholds. Rows are appended to benchmarks/results/update_vs_refit.jsonl.
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
    parser.add_argument("--categories", nargs="+", default=["bottle", "tire"])
    parser.add_argument("--detectors", nargs="+", default=["patchcore", "padim"])
    parser.add_argument("--added", type=int, default=20)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "update_vs_refit.jsonl")
    )
    args = parser.parse_args()

    from defectscope.data import load_category
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.metrics import auroc

    for name in args.categories:
        category = load_category(Path(args.data) / name, require_test=True)
        train = list(category.train_paths)
        base, added = train[: -args.added], train[-args.added :]
        tests = [s.path for s in category.test_samples]
        labels = np.array([s.is_anomalous for s in category.test_samples])
        for detector in args.detectors:
            updated = make_detector(detector, {"seed": 0}).fit(base)
            start = time.perf_counter()
            updated.update(added)
            update_s = time.perf_counter() - start
            start = time.perf_counter()
            refit = make_detector(detector, {"seed": 0}).fit(train)
            refit_s = time.perf_counter() - start
            a = updated.score(tests).scores.astype(np.float64)
            b = refit.score(tests).scores.astype(np.float64)
            rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-12)
            row = {
                "category": name,
                "detector": detector,
                "n_base": len(base),
                "n_added": len(added),
                "update_s": round(update_s, 2),
                "refit_s": round(refit_s, 2),
                "score_rel_diff_median": float(np.median(rel)),
                "score_rel_diff_max": float(rel.max()),
                "auroc_updated": round(float(auroc(labels, a)), 4),
                "auroc_refit": round(float(auroc(labels, b)), 4),
                "threshold_updated": round(float(updated.threshold_), 4),
                "threshold_refit": round(float(refit.threshold_), 4),
                "bank_updated": updated.fit_info_.get("bank_size"),
                "bank_refit": refit.fit_info_.get("bank_size"),
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
