"""Probe: normalise PatchCore's maps by where good parts score high, from out-of-fold maps.

The earlier probe (probe_map_norm.py) built its per-pixel references from 32 held-out images
scored by a model whose bank already held them. Every training image now has an out-of-fold
map (scored by the model of the other folds), so the references can come from all of them.
One default fit per category and seed; its out-of-fold maps and its synthetic defects' maps are
captured; each normalisation is judged by its synthetic AUROC (label-free: what could choose
it) and, beside it, the test image AUROC (which chooses nothing).

    python benchmarks/probe_oof_norm.py --categories tire screw bottle --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from defectscope.data import load_category
from defectscope.engine.fitting import estimator
from defectscope.metrics import auroc


def variants(good: np.ndarray, sigma: float):
    mean = ndimage.gaussian_filter(good.mean(0), sigma)
    std = ndimage.gaussian_filter(good.std(0), sigma)
    q95 = ndimage.gaussian_filter(np.quantile(good, 0.95, axis=0), sigma)
    top = ndimage.gaussian_filter(good.max(0), sigma)
    eps = 1e-6
    return {
        "none": lambda m: m,
        f"z s{sigma:g}": lambda m: (m - mean) / (std + eps),
        f"ratio-mean s{sigma:g}": lambda m: m / (mean + eps),
        f"ratio-q95 s{sigma:g}": lambda m: m / (q95 + eps),
        f"ratio-max s{sigma:g}": lambda m: m / (top + eps),
    }


def peak(maps: np.ndarray) -> np.ndarray:
    return maps.reshape(len(maps), -1).max(axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["tire", "screw", "bottle"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[8.0, 16.0])
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "probe_oof_norm.jsonl")
    )
    args = parser.parse_args()
    import defectscope

    captured: dict[str, list] = {}
    estimator.MAX_SAMPLE_MAPS = 1 << 30  # keep every out-of-fold map
    plain_scales = estimator.fixed_scales
    plain_scores = estimator._lean_scores

    def scales(scores, maps, threshold, map_scores=None):
        captured["good"] = maps.copy()
        return plain_scales(scores, maps, threshold, map_scores)

    def synthetic_scores(module, batch, step):
        for scores, maps in plain_scores(module, batch, step):
            captured.setdefault("synthetic", []).append(maps.copy())
            yield scores, maps

    estimator.fixed_scales = scales
    estimator._lean_scores = synthetic_scores
    for seed in args.seeds:
        for name in args.categories:
            captured.clear()
            category = load_category(f"{args.data}/{name}", require_test=True)
            model = defectscope.PatchCore(seed=seed).fit(category)
            good = captured["good"]
            syn = np.concatenate(captured["synthetic"])
            labels = np.array([s.is_anomalous for s in category.test_samples])
            test = model.score([s.path for s in category.test_samples]).maps
            rows = {}
            for sigma in args.sigmas:
                for label, norm in variants(good, sigma).items():
                    g, s, t = peak(norm(good)), peak(norm(syn)), peak(norm(test))
                    syn_auc = auroc(
                        np.r_[np.zeros(len(g)), np.ones(len(s))].astype(bool), np.r_[g, s]
                    )
                    rows[label] = {
                        "synthetic_auroc": round(float(syn_auc), 4),
                        "test_auroc": round(float(auroc(labels, t)), 4),
                    }
            record = {"category": name, "seed": seed, "n_good": len(good), "variants": rows}
            print(json.dumps(record), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
