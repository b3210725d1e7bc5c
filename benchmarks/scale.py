"""Fit peak memory and time against the number of training images.

Fits PaDiM (default configuration) on the first N training images of a category, repeating
images when N exceeds what the category has, each N in a fresh subprocess so that peak RSS is
that fit's alone. Peak memory should stay flat (streaming statistics) and time grow linearly.

    python benchmarks/scale.py --data ../shared/datasets/screw --counts 50 100 200 300 400
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def child(data: str, count: int, runtime: str) -> None:
    from defectscope import PaDiM
    from defectscope.data import load_category

    paths = list(load_category(data).train_paths)
    paths = (paths * (count // len(paths) + 1))[:count]
    model = PaDiM(runtime=runtime)
    model._build_extractor()  # build (and export) first so that only fitting is timed
    start = time.perf_counter()
    model.fit(paths)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"count": count, "fit_s": seconds, "peak_rss_mb": rss}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--counts", type=int, nargs="+", default=[50, 100, 200, 400])
    parser.add_argument("--runtime", default="onnxruntime")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data, args.child, args.runtime)
        return
    rows = []
    for count in args.counts:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--data",
                args.data,
                "--runtime",
                args.runtime,
                "--child",
                str(count),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
        rows.append(json.loads(line[7:]))
        print(rows[-1], flush=True)
    base = rows[0]
    print("\n| training images | fit s | s per image | peak RSS MB | RSS vs first |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['count']} | {r['fit_s']:.1f} | {r['fit_s'] / r['count']:.3f} | "
            f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb'] - 1:+.1%} |"
        )


if __name__ == "__main__":
    main()
