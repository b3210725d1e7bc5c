"""`defectscope predict` end to end, whole processes, one source tree against another.

Each variant is a source tree (a checkout's ``src``, e.g. an older commit through ``git worktree
add``) and a model; every round runs each variant once as a fresh ``defectscope predict``
process of the same images (overlays written, or ``--save none``), in rotating order, and the
wall time of each process is kept. Reported: the median per variant and its ratio to the first
variant's median, all measured in the same run.

    git worktree add /tmp/before <rev>
    python benchmarks/predict_end_to_end.py --images ../shared/datasets/tire/test \\
        --variant before=/tmp/before/src:runs/fit/tire --variant now=src:runs/fit/tire \\
        --variant now-bf16=src:runs/fit/tire_bf16 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(source: Path, model: Path, images: Path, out: Path, extra: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    command = [sys.executable, "-m", "defectscope.cli", "predict", "--model", str(model)]
    command += ["--project", str(out), "-q", *extra, str(images)]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"predict failed ({source}, {model}):\n{done.stderr[-2000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument(
        "--variant", action="append", required=True, help="LABEL=SOURCE_DIR:MODEL (repeated)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--save", default="all", choices=("all", "fail", "none"))
    parser.add_argument("--out", type=Path, help="append one JSON row here")
    args = parser.parse_args()
    variants = []
    for text in args.variant:
        label, _, rest = text.partition("=")
        source, _, model = rest.partition(":")
        variants.append((label, Path(source), Path(model)))
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for label, source, model in order:
                wall = run_once(source, model, args.images, Path(tmp), ["--save", args.save])
                times[label].append(wall)
                print(f"round {r + 1} {label}: {wall:.2f} s", flush=True)
    first = statistics.median(times[variants[0][0]])
    row = {"images": str(args.images), "save": args.save, "rounds": args.rounds, "variants": {}}
    print(f"\n{'variant':16} {'median s':>9} {'vs ' + variants[0][0]:>12}")
    for label, source, model in variants:
        median = statistics.median(times[label])
        row["variants"][label] = {
            "source": str(source),
            "model": str(model),
            "seconds": [round(t, 3) for t in times[label]],
            "median_s": round(median, 3),
            "speedup": round(first / median, 3),
        }
        print(f"{label:16} {median:9.2f} {first / median:11.2f}x")
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
