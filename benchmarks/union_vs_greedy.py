"""The default PatchCore bank (the union of the folds' coresets, re-selected: what out-of-fold
scoring and the memory budget need) against one exact greedy selection over every training
patch at once, on the same fitted model: image and pixel AUROC on each category's test split.

    python benchmarks/union_vs_greedy.py --data ../shared/datasets/bottle \\
        ../shared/datasets/screw ../shared/datasets/tire --seeds 0 1 2 3

Defaults otherwise; the feature graph, gain target and threshold are the fitted model's; only
the bank is swapped. A benchmark, not a test: it reads the test splits to measure, never to
choose.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def one(data: str, seed: int) -> dict:
    from defectscope import PatchCore
    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.workflows.evaluation import evaluate
    from defectscope.models.patchcore.lean import bank_index, select

    category = load_category(data)
    detector = PatchCore(seed=seed).fit(category)
    module = detector.module_
    union = evaluate(detector, category).metrics
    parts = []
    for _, batch in iter_batches(list(category.train_paths), detector.config_.input_shape, 16):
        feats = module.embedding(batch, module.target)
        parts.append(feats.reshape(-1, feats.shape[-1]))
    patches = np.concatenate(parts)
    del parts
    start = time.perf_counter()
    config = detector.config_
    bank, _ = select(patches, len(module.bank) / len(patches), config)
    seconds = time.perf_counter() - start
    del patches
    module.bank, module.index = bank, bank_index(bank, config)
    greedy = evaluate(detector, category).metrics
    return {
        "category": category.name,
        "seed": seed,
        "bank": len(bank),
        "greedy_s": seconds,
        "union_image": union["image_auroc"],
        "greedy_image": greedy["image_auroc"],
        "union_pixel": union.get("pixel_auroc"),
        "greedy_pixel": greedy.get("pixel_auroc"),
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
        "\n| category | bank rows | image AUROC: fold union (default) | one greedy | "
        "pixel AUROC: fold union | one greedy |"
    )
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r["category"] for r in rows):
        mine = [r for r in rows if r["category"] == name]

        def mean(key, mine=mine):
            values = [r[key] for r in mine if r[key] is not None]
            return f"{statistics.mean(values):.4f}" if values else "n/a"

        print(
            f"| {name} | {mine[0]['bank']:,} | {mean('union_image')} | {mean('greedy_image')} | "
            f"{mean('union_pixel')} | {mean('greedy_pixel')} |"
        )


if __name__ == "__main__":
    main()
