"""Whole `defectscope` processes, one source tree against another, side by side.

Each variant is a source tree (a checkout's ``src``, e.g. an older commit through ``git worktree
add``) and, for ``--job predict`` and ``evaluate``, a model; every round runs each variant once
in rotating order, as fresh processes: ``predict`` of the images (overlays written, or ``--save
none``), ``evaluate`` of a category's test split with the variant's model (``--job evaluate``),
or ``fit`` of a category followed by ``evaluate`` of its test split (``--job fit-evaluate``;
the two timed apart and together). Reported: the median per variant and its ratio to the first
variant's median, all measured in the same run.

    git worktree add /tmp/before <rev>
    python benchmarks/end_to_end.py --job predict --images ../shared/datasets/tire/test \
        --variant before=/tmp/before/src:runs/fit/tire --variant now=src:runs/fit/tire \
        --variant now-bf16=src:runs/fit/tire_bf16 --rounds 5
    python benchmarks/end_to_end.py --job fit-evaluate --data ../shared/datasets/tire \
        --variant before=/tmp/before/src --variant now=src --rounds 3 [--fit-args "--model padim"]
    python benchmarks/end_to_end.py --job evaluate --data ../shared/datasets/tire \
        --variant before=/tmp/before/src:runs/fit/tire --variant now=src:runs/fit/tire --rounds 5
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


def timed(source: Path, arguments: list[str]) -> float:
    """Wall seconds of one fresh ``defectscope`` process from ``source``."""
    env = {**os.environ, "PYTHONPATH": str(source.resolve())}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "defectscope.cli", *arguments], env=env, capture_output=True
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{arguments[0]} failed ({source}):\n{done.stderr.decode()[-2000:]}")
    return wall


def run_once(args, source: Path, model: Path | None, out: Path, name: str) -> dict[str, float]:
    if args.job == "predict":
        arguments = ["predict", "--model", str(model), "--project", str(out), "--name", name]
        return {
            "predict_s": timed(source, [*arguments, "-q", "--save", args.save, str(args.images)])
        }
    common = ["--project", str(out), "--name", name, "-q"]
    if args.job == "evaluate":
        arguments = ["evaluate", "--model", str(model), "--data", str(args.data), *common]
        return {"evaluate_s": timed(source, arguments)}
    fit = timed(source, ["fit", "--data", str(args.data), *args.fit_args.split(), *common])
    model = out / "fit" / name
    evaluate = timed(source, ["evaluate", "--model", str(model), "--data", str(args.data), *common])
    return {"fit_s": fit, "evaluate_s": evaluate, "fit_evaluate_s": fit + evaluate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job", choices=("predict", "evaluate", "fit-evaluate"), default="predict")
    parser.add_argument("--images", type=Path, help="--job predict: images or a folder")
    parser.add_argument("--data", type=Path, help="--job evaluate, fit-evaluate: a category folder")
    parser.add_argument(
        "--variant", action="append", required=True, help="LABEL=SOURCE_DIR[:MODEL] (repeated)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--save", default="all", choices=("all", "fail", "none"))
    parser.add_argument(
        "--fit-args", default="", help='--job fit-evaluate: more fit options, e.g. "--model padim"'
    )
    parser.add_argument("--out", type=Path, help="append one JSON row here")
    args = parser.parse_args()
    if (args.job == "predict") != (args.images is not None) or (args.job != "predict") != (
        args.data is not None
    ):
        parser.error("--job predict takes --images, --job evaluate and fit-evaluate take --data")
    variants = []
    for text in args.variant:
        label, _, rest = text.partition("=")
        source, _, model = rest.partition(":")
        variants.append((label, Path(source), Path(model) if model else None))
    times: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = variants[r % len(variants) :] + variants[: r % len(variants)]
            for label, source, model in order:
                taken = run_once(args, source, model, Path(tmp), f"{label}{r}")
                times[label].append(taken)
                shown = ", ".join(f"{k} {v:.2f}" for k, v in taken.items())
                print(f"round {r + 1} {label}: {shown}", flush=True)
    keys = list(times[variants[0][0]][0])
    row = {"job": args.job, "input": str(args.images or args.data), "rounds": args.rounds}
    row |= {"save": args.save} if args.job == "predict" else {"fit_args": args.fit_args}
    row["variants"] = {}
    first = {k: statistics.median(t[k] for t in times[variants[0][0]]) for k in keys}
    print(f"\n{'variant':16}" + "".join(f" {k + ' (median)':>24} {'ratio':>7}" for k in keys))
    for label, source, model in variants:
        medians = {k: statistics.median(t[k] for t in times[label]) for k in keys}
        row["variants"][label] = {
            "source": str(source),
            "model": None if model is None else str(model),
            "seconds": {k: [round(t[k], 3) for t in times[label]] for k in keys},
            "median_s": {k: round(v, 3) for k, v in medians.items()},
            "speedup": {k: round(first[k] / medians[k], 3) for k in keys},
        }
        print(
            f"{label:16}"
            + "".join(f" {medians[k]:24.2f} {first[k] / medians[k]:6.2f}x" for k in keys)
        )
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
