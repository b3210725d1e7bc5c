"""The exact bank search of the lean path against its former four-pass form (issue 25, part 3).

    .venv/bin/python benchmarks/search_passes.py

One batch of PatchCore's evaluate (4 images of 1,600 patches at 320 px, 152 dimensions) against
a bank of 5,120 rows (screw's at the default ratio): ``ops.search.nearest_distance`` (the -2
folded into the queries, ``|q|^2`` added to each query's minimum: two passes over the distance
buffer per bank chunk) against the former form (four passes: scale, add ``|q|^2``, add
``|b|^2``, minimum), interleaved in one process, medians of ``--repeats``; and the largest
relative difference of their distances. ``--evaluate CATEGORY``: also a whole evaluate of a
default PatchCore fitted on it (lean path), with either search, alternating, ``--repeats 3``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from defectscope.ops.search import BANK_CHUNK, nearest_distance


def four_passes(queries: np.ndarray, bank: np.ndarray, chunk: int = BANK_CHUNK) -> np.ndarray:
    """The search as it was before the seventh session (the reference)."""
    q2 = np.einsum("ij,ij->i", queries, queries)[:, None]
    best = None
    d2 = np.empty((len(queries), min(chunk, len(bank))), dtype=np.float32)
    for start in range(0, len(bank), chunk):
        part = bank[start : start + chunk]
        out = d2[:, : len(part)]
        np.matmul(queries, part.T, out=out)
        out *= -2.0
        out += q2
        out += np.einsum("ij,ij->i", part, part)
        value = out.min(axis=1)
        best = value if best is None else np.minimum(best, value, out=best)
    return np.sqrt(np.maximum(best, 0.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=int, default=5120)
    parser.add_argument("--queries", type=int, default=6400)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--evaluate", help="a category folder to evaluate with either search")
    args = parser.parse_args()
    if args.evaluate:
        evaluate_both(args.evaluate, args.repeats)
        return
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(args.bank, 152)).astype(np.float32)
    queries = (rng.normal(size=(args.queries, 152)) * 1.1).astype(np.float32)
    before, after = four_passes(queries, bank), nearest_distance(queries, bank)
    print(f"largest relative difference {np.max(np.abs(before - after) / before):.2e}")
    times: dict[str, list[float]] = {"four passes (before)": [], "two passes (now)": []}
    for _ in range(args.repeats):
        for name, search in (
            ("four passes (before)", four_passes),
            ("two passes (now)", nearest_distance),
        ):
            start = time.perf_counter()
            search(queries, bank)
            times[name].append(time.perf_counter() - start)
    medians = {k: float(np.median(v)) for k, v in times.items()}
    for name, seconds in medians.items():
        print(f"{name:22} {seconds * 1000:7.1f} ms")
    print(f"ratio {medians['four passes (before)'] / medians['two passes (now)']:.2f}x")


def evaluate_both(data: str, repeats: int) -> None:
    """Evaluate one fitted default PatchCore with either search, alternating."""
    import defectscope
    import defectscope.models.patchcore.lean as lean
    from defectscope.engine.workflows.evaluation import evaluate

    model = defectscope.PatchCore(seed=0).fit(data)
    times: dict[str, list[float]] = {"four passes (before)": [], "two passes (now)": []}
    aurocs = {}
    for _ in range(repeats):
        for name, search in (
            ("four passes (before)", four_passes),
            ("two passes (now)", nearest_distance),
        ):
            lean.nearest_distance = search
            start = time.perf_counter()
            aurocs[name] = evaluate(model, data).metrics["image_auroc"]
            times[name].append(time.perf_counter() - start)
    lean.nearest_distance = nearest_distance
    medians = {k: float(np.median(v)) for k, v in times.items()}
    for name, seconds in medians.items():
        print(f"evaluate, {name:22} {seconds:6.2f} s  image AUROC {aurocs[name]:.4f}")
    print(f"ratio {medians['four passes (before)'] / medians['two passes (now)']:.2f}x")


if __name__ == "__main__":
    main()
