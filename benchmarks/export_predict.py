"""Predict with an exported ONNX file vs the .safetensors model, side by side in one run.

Each run is a fresh ``defectscope predict`` process (what a user starts), the two alternating;
reported: images per second end to end (wall time of the whole process, imports included, and
the rate of the scoring loop alone from the process's own timing) and the peak RSS of the
process, medians over the repeats.

    python benchmarks/export_predict.py --model runs/fit/tire --images ../shared/datasets/tire/test
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CHILD = """
import sys, time
from pathlib import Path
from defectscope.engine.workflows.loading import load
from defectscope.engine.workflows.predicting import expand_inputs
start = time.perf_counter()
model = load(sys.argv[1])
files, _ = expand_inputs([sys.argv[2]])
loaded = time.perf_counter()
scores = model.score(files).scores
done = time.perf_counter()
print(len(files), loaded - start, done - loaded, "torch" in sys.modules)
"""


def run_once(model: Path, images: Path) -> dict:
    """One fresh process; its own peak RSS from wait4, its timings from its output."""
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(model), str(images)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out = child.stdout.read().split()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"predict with {model} failed (status {status})")
    n, load_s, score_s, torch_loaded = int(out[0]), float(out[1]), float(out[2]), out[3]
    return {
        "images": n,
        "wall_s": wall,
        "load_s": load_s,
        "end_to_end_img_s": n / wall,
        "scoring_img_s": n / score_s,
        "peak_mb": usage.ru_maxrss / 1024,
        "torch": torch_loaded == "True",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="run folder or .safetensors")
    parser.add_argument("--images", required=True, type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    safetensors = args.model if args.model.suffix else args.model / "model.safetensors"
    onnx_file = safetensors.with_suffix(".onnx")
    if not onnx_file.is_file():
        subprocess.run(["defectscope", "export", "--model", str(safetensors), "-q"], check=True)
    results: dict[str, list[dict]] = {"exported .onnx": [], ".safetensors": []}
    for _ in range(args.repeats):
        for name, model in (("exported .onnx", onnx_file), (".safetensors", safetensors)):
            results[name].append(run_once(model, args.images))
    print(f"{args.images}: median of {args.repeats} fresh processes, alternating")
    print("| model | torch imported | load s | scoring img/s | end to end img/s | peak RSS MB |")
    print("|---|---|---|---|---|---|")
    for name, rows in results.items():
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k != "torch"}
        print(
            f"| {name} | {rows[0]['torch']} | {med['load_s']:.2f} | {med['scoring_img_s']:.1f} | "
            f"{med['end_to_end_img_s']:.1f} | {med['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
