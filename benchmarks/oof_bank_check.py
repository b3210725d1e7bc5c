"""Do the out-of-fold scores still fit the final bank now that it is one exact selection?

Out-of-fold scores come from banks selected from the other folds' coresets (a union), while the
final bank is, where the memory budget allows, one exact greedy selection over every patch. For
each fold this scores the fold's training images with both banks a fit without that fold could
have: the union (what the fit uses) and one exact greedy over the other folds' patches (what an
exact final bank would be without the fold). Training images only: nothing here reads a test
split.

    .venv/bin/python benchmarks/oof_bank_check.py --data ../shared/datasets/bottle \\
        ../shared/datasets/tire ../shared/datasets/screw

Printed per category and fold: mean scores of the fold's images with either bank, the median
ratio exact / union; then the share of the exact banks' scores above the threshold that
rejects 10% (and 5%) of the union banks' scores: where it stays near 10% (5%), the threshold
set from the union scores keeps its false-reject rate for an exact final bank.
"""

from __future__ import annotations

import argparse

import numpy as np


def check(data: str, seed: int) -> None:
    from defectscope import PatchCore
    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.fitting.estimator import fold_split
    from defectscope.models.patchcore.lean import SHARD_OVERSAMPLE, bank_index, select

    category = load_category(data)
    detector = PatchCore(seed=seed).fit(category)
    module, config = detector.module_, detector.config_
    paths = list(category.train_paths)
    feats, images = [], []
    for _, batch in iter_batches(paths, config.input_shape, 16):
        feats.append(module.embedding(batch, module.target))
        images.append(batch)
    feats, images = np.concatenate(feats), np.concatenate(images)
    dim = feats.shape[-1]
    folds = fold_split(len(paths), detector.fit_info_["threshold_source"]["folds"])
    scores: dict[str, list[np.ndarray]] = {"union": [], "exact": []}
    for held, members in enumerate(folds):
        others = [i for k, m in enumerate(folds) if k != held for i in m]
        parts = [
            select(feats[m].reshape(-1, dim), config.coreset_ratio * SHARD_OVERSAMPLE, config)[0]
            for k, m in enumerate(folds)
            if k != held
        ]
        union = np.concatenate(parts)
        n = len(others) * feats.shape[1]
        k = max(1, round(config.coreset_ratio * n))
        banks = {
            "union": select(union, k / len(union), config)[0],
            "exact": select(feats[others].reshape(-1, dim), k / n, config)[0],
        }
        fold_scores = {}
        for name, bank in banks.items():
            module.bank, module.index = bank, bank_index(bank, config)
            held_images = images[members]
            fold_scores[name] = np.concatenate(
                [module(held_images[i : i + 4])[0] for i in range(0, len(held_images), 4)]
            )
            scores[name].append(fold_scores[name])
        ratio = fold_scores["exact"] / fold_scores["union"]
        print(
            f"{category.name} fold {held}: mean union {fold_scores['union'].mean():.3f}, "
            f"exact {fold_scores['exact'].mean():.3f}, median ratio {np.median(ratio):.4f}",
            flush=True,
        )
    union, exact = (np.concatenate(scores[name]) for name in ("union", "exact"))
    for rate in (0.10, 0.05):
        threshold = np.quantile(union, 1 - rate)
        print(
            f"{category.name}: threshold rejecting {rate:.0%} of the union scores rejects "
            f"{(union > threshold).mean():.3f} of them and {(exact > threshold).mean():.3f} of "
            "the exact banks' scores",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for data in args.data:
        check(data, args.seed)


if __name__ == "__main__":
    main()
