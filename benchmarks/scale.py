"""Fit time and peak memory against the number of training images, with the image AUROC at
every size.

Fits a detector (default configuration) on the first N training images of a category,
repeating images when N exceeds what the category has, each N in a fresh subprocess so that
peak RSS is that fit's alone; then (``--evaluate``) scores the category's test split. The
feature graph is cached before the first child runs, so no child pays for exporting it.

    python benchmarks/scale.py --model patchcore --data ../shared/datasets/screw \\
        --counts 160 320 1280 --evaluate
    python benchmarks/scale.py --model patchcore --data ../shared/datasets/screw \\
        --counts 10000 --evaluate --compare-exact
    python benchmarks/scale.py --model padim --data ../shared/datasets/screw --counts 50 400

Each child fixes glibc's mapping threshold as the command line does
(:func:`defectscope.memory.map_large_blocks`); ``--glibc-default`` leaves it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(
    data: str,
    count: int,
    model: str,
    evaluate: bool,
    compare_exact: bool,
    params: dict,
    glibc_default: bool = False,
) -> None:
    from defectscope.data import load_category
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.memory import map_large_blocks

    if not glibc_default:
        map_large_blocks()  # what `defectscope fit` sets for its process

    category = load_category(data)
    paths = list(category.train_paths)
    paths = (paths * (count // len(paths) + 1))[:count]
    detector = make_detector(model, params)
    start = time.perf_counter()
    detector.fit(paths)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"model": model, "count": count, "fit_s": seconds, "peak_rss_mb": rss}
    info = detector.fit_info_
    row.update(
        {k: info[k] for k in ("bank_size", "chunks_reduced_early", "bank_selection") if k in info}
    )
    if evaluate:
        from defectscope.engine.workflows.evaluation import evaluate as run

        start = time.perf_counter()
        metrics = run(detector, category).metrics
        row["evaluate_s"] = time.perf_counter() - start
        row["image_auroc"] = metrics["image_auroc"]
        row["pixel_auroc"] = metrics.get("pixel_auroc")
        index = getattr(detector.module_, "index", None)
        row["search"] = "exact" if index is None else f"ivf nlist {index.nlist}"
        if index is not None and compare_exact:
            # the same model searching its whole bank: what the index costs in AUROC
            detector.module_.index = None
            start = time.perf_counter()
            metrics = run(detector, category).metrics
            row["exact_evaluate_s"] = time.perf_counter() - start
            row["exact_image_auroc"] = metrics["image_auroc"]
            row["exact_pixel_auroc"] = metrics.get("pixel_auroc")
    print("RESULT " + json.dumps(row))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--model", default="patchcore")
    parser.add_argument("--counts", type=int, nargs="+", default=[160, 320, 1280])
    parser.add_argument("--evaluate", action="store_true", help="image AUROC at every size")
    parser.add_argument(
        "--compare-exact",
        action="store_true",
        help="where PatchCore searched through an index, evaluate again with the exact search",
    )
    parser.add_argument(
        "--params", type=json.loads, default={}, help='detector options as JSON, e.g. {"seed": 1}'
    )
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's mapping threshold as it is (the command line fixes it at 1 MB)",
    )
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(
            args.data,
            args.child,
            args.model,
            args.evaluate,
            args.compare_exact,
            args.params,
            args.glibc_default,
        )
        return
    # cache the feature graph first: a child that exported it would time the export too
    warm = [sys.executable, __file__, "--data", args.data, "--model", args.model, "--child", "3"]
    subprocess.run(warm, capture_output=True, text=True, check=True)
    rows = []
    for count in args.counts:
        command = [*warm[:-1], str(count), *(["--evaluate"] if args.evaluate else [])]
        command += ["--compare-exact"] if args.compare_exact else []
        command += ["--glibc-default"] if args.glibc_default else []
        command += ["--params", json.dumps(args.params)]
        proc = subprocess.run(command, capture_output=True, text=True, check=True)
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append(json.loads(line[7:]))
        print(rows[-1], flush=True)
    base = rows[0]
    print("\n| training images | fit s | fit vs first | peak RSS MB | RSS vs first | image AUROC |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        auroc = f"{r['image_auroc']:.3f}" if "image_auroc" in r else "n/a"
        print(
            f"| {r['count']} | {r['fit_s']:.1f} | {r['fit_s'] / base['fit_s']:.2f}x | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | {auroc} |"
        )


if __name__ == "__main__":
    main()
