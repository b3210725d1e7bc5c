"""PatchCore's two banks side by side: the union of the folds' coresets, re-selected (what the
memory budget needs above its size), and one exact greedy selection over every training patch
(the default where the patches' projections fit in the budget, ``bank_selection: exact`` in fit
info). Image and pixel AUROC on each category's test split, and the fit time of each.

    python benchmarks/union_vs_greedy.py --data ../shared/datasets/bottle \\
        ../shared/datasets/screw ../shared/datasets/tire --seeds 0 1 2 3

For each category and seed: the default fit, and a fit with the exact selection switched off
(``ExactPool.fits`` patched to False: the fold union, the default before the ninth session), in
alternating order; then an exact greedy selection made here from all the training patches of
the default model checks that its bank is that selection (``same``). A benchmark, not a test:
it reads the test splits to measure, never to choose.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def fit(category, seed: int, exact: bool):
    from contextlib import nullcontext
    from unittest import mock

    from defectscope import PatchCore
    from defectscope.models.patchcore.lean import ExactPool

    union_only = mock.patch.object(ExactPool, "fits", staticmethod(lambda *args: False))
    start = time.perf_counter()
    with nullcontext() if exact else union_only:
        detector = PatchCore(seed=seed).fit(category)
    return detector, time.perf_counter() - start


def one(data: str, seed: int) -> dict:
    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.workflows.evaluation import evaluate
    from defectscope.models.patchcore.lean import select

    category = load_category(data)
    order = (True, False) if seed % 2 == 0 else (False, True)
    fitted = {exact: fit(category, seed, exact) for exact in order}
    detector, exact_s = fitted[True]
    union_detector, union_s = fitted[False]
    selection = detector.module_.info["bank_selection"]
    exact = evaluate(detector, category).metrics
    union = evaluate(union_detector, category).metrics
    module = detector.module_
    parts = []
    for _, batch in iter_batches(list(category.train_paths), detector.config_.input_shape, 16):
        feats = module.embedding(batch, module.target)
        parts.append(feats.reshape(-1, feats.shape[-1]))
    patches = np.concatenate(parts)
    del parts
    bank, _ = select(patches, len(module.bank) / len(patches), detector.config_)
    del patches
    return {
        "category": category.name,
        "seed": seed,
        "bank": len(bank),
        "selection": selection,
        "same": bool(np.array_equal(bank, module.bank)),
        "exact_fit_s": exact_s,
        "union_fit_s": union_s,
        "union_image": union["image_auroc"],
        "greedy_image": exact["image_auroc"],
        "union_pixel": union.get("pixel_auroc"),
        "greedy_pixel": exact.get("pixel_auroc"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    args = parser.parse_args()
    rows = []
    for data in args.data:
        for seed in args.seeds:
            rows.append(one(data, seed))
            print(rows[-1], flush=True)
    print(
        "\n| category | bank rows | default selection (same as exact) | image AUROC: fold union "
        "| exact greedy | pixel AUROC: fold union | exact greedy | fit s, median: union | exact |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["category"] for r in rows):
        mine = [r for r in rows if r["category"] == name]

        def mean(key, mine=mine):
            values = [r[key] for r in mine if r[key] is not None]
            return f"{statistics.mean(values):.4f}" if values else "n/a"

        same = sum(r["same"] for r in mine)
        selections = "/".join(sorted({r["selection"] for r in mine}))
        union_s = statistics.median(r["union_fit_s"] for r in mine)
        exact_s = statistics.median(r["exact_fit_s"] for r in mine)
        print(
            f"| {name} | {mine[0]['bank']:,} | {selections} ({same} of {len(mine)}) | "
            f"{mean('union_image')} | {mean('greedy_image')} | {mean('union_pixel')} | "
            f"{mean('greedy_pixel')} | {union_s:.1f} | {exact_s:.1f} |"
        )


if __name__ == "__main__":
    main()
