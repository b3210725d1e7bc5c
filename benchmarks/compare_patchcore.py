"""PatchCore's coreset selection: defectscope vs anomalib's ``KCenterGreedy``, side by side.

Both run on the **same patch embeddings** of a category's training images (defectscope's
PatchCore features: efficientnet_lite0 blocks.2 + blocks.4, 3x3 local averaging, 320 px, gain
correction), with the same coreset ratio. defectscope's greedy runs to the end. anomalib's
sampler is the fit's dominant cost and takes hours on this CPU, so it runs for a fixed time
budget and its total is extrapolated from its own progress rate (iterations per second, which
is constant: every iteration updates every point). Needs anomalib (``pip install -e .[bench]``).

    /work/bench-venv/bin/python benchmarks/compare_patchcore.py --data ../shared/datasets/screw
"""

from __future__ import annotations

import argparse
import time

import torch


def embeddings(folder: str, image_size: int) -> torch.Tensor:
    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.fitting.estimator import make_detector, to_tensor

    category = load_category(folder)
    # A tiny random bank: only the fitted feature pipeline (and its gain target) is needed.
    model = make_detector(
        "patchcore",
        {
            "image_size": image_size,
            "coreset_method": "random",
            "coreset_ratio": 1e-4,
            "holdout": 0.0,
        },
    ).fit(category)
    out = []
    for _, batch in iter_batches(list(category.train_paths), image_size, 8, 2):
        with torch.inference_mode():
            feats = model.module_.patch_features(to_tensor(batch))
        out.append(feats.reshape(-1, feats.shape[-1]))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a category folder")
    parser.add_argument("--image-size", type=int, default=320)
    parser.add_argument("--ratio", type=float, default=0.01)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for anomalib")
    args = parser.parse_args()

    from anomalib.models.components.sampling import k_center_greedy

    from defectscope.ops import greedy_coreset

    x = embeddings(args.data, args.image_size)
    k = int(len(x) * args.ratio)
    print(f"{args.data}: {len(x)} patches of {x.shape[1]} dims, coreset {k} ({args.ratio:.0%})")

    start = time.perf_counter()
    core = greedy_coreset(x, k, projection_dim=32, seed=0)
    ours = time.perf_counter() - start
    print(
        f"defectscope greedy_coreset (exact, d=32): {ours:.1f} s for {k} picks, "
        f"radius {core.radius:.2f}"
    )

    sampler = k_center_greedy.KCenterGreedy(x, args.ratio)
    done = {"n": 0, "t0": None, "t1": None}
    original = sampler.update_distances

    def counted(cluster_center):
        if done["t0"] is None:
            done["t0"] = time.perf_counter()
        original(cluster_center)
        done["n"] += 1
        done["t1"] = time.perf_counter()
        if done["t1"] - done["t0"] > args.budget:
            raise TimeoutError

    sampler.update_distances = counted
    start = time.perf_counter()
    try:
        sampler.select_coreset_idxs()
        finished = True
    except TimeoutError:
        finished = False
    setup = done["t0"] - start  # its random projection, before the first iteration
    rate = done["n"] / (done["t1"] - done["t0"])
    total = setup + k / rate
    print(
        f"anomalib KCenterGreedy: projection to {sampler.features.shape[1]} dims in {setup:.1f} s, "
        f"then {rate:.2f} iterations/s over {done['n']} iterations"
        + ("" if finished else f" (stopped after {args.budget:.0f} s)")
    )
    print(
        f"anomalib, extrapolated to {k} picks: {total:.0f} s = {total / 60:.1f} min; "
        f"ratio {total / ours:.0f}x"
    )


if __name__ == "__main__":
    main()
