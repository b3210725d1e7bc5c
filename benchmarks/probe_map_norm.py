"""Probe: normalise PatchCore's maps by where good parts score high (not adopted; see README).

Fits the default PatchCore on a category, scores its held-out training images (the slice the
engine sets the threshold with), and builds per-pixel reference maps from them (mean, standard
deviation, maximum; smoothed with a Gaussian of ``sigma`` pixels). The test maps are then
normalised against them in several ways and the image AUROC of each map's maximum is printed
next to the unnormalised one.

    python benchmarks/probe_map_norm.py tire 0      # category, seed
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

import defectscope
from defectscope.data import load_category
from defectscope.engine.fitting.estimator import holdout_split
from defectscope.metrics import auroc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("category")
    parser.add_argument("seed", type=int, nargs="?", default=0)
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[16.0, 32.0])
    args = parser.parse_args()
    category = load_category(f"{args.data}/{args.category}", require_test=True)
    model = defectscope.PatchCore(progress=False, seed=args.seed).fit(category)
    train = list(category.train_paths)
    held, _ = holdout_split(len(train), 0.1, args.seed)
    good = model.score([train[i] for i in held]).maps
    labels = np.array([s.is_anomalous for s in category.test_samples])
    maps = model.score([s.path for s in category.test_samples]).maps

    def image_auroc(m: np.ndarray) -> float:
        return round(auroc(labels, m.reshape(len(m), -1).max(axis=1)), 3)

    print("unnormalised", image_auroc(maps))
    for sigma in args.sigmas:
        mean = ndimage.gaussian_filter(good.mean(0), sigma)
        std = ndimage.gaussian_filter(good.std(0), sigma)
        top = ndimage.gaussian_filter(good.max(0), sigma)
        variants = {
            "z": (maps - mean) / (std + 1e-6),
            "ratio": maps / (mean + 1e-6),
            "over-max": maps - top,
            "ratio-max": maps / (top + 1e-6),
            "sub-mean": maps - mean,
        }
        for name, normalised in variants.items():
            print(sigma, name, image_auroc(normalised))


if __name__ == "__main__":
    main()
