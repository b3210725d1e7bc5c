"""The lean path against the PyTorch path: fit + evaluate + predict, side by side.

Fresh processes, this checkout (the lean path, its graph cached by a warm-up run) alternating
with another checkout's ``src`` (``--baseline-src``, e.g. a worktree of the commit before the
lean path), medians and ratios. PaDiM runs the configuration of ``compare_anomalib.py``
(efficientnet_lite0, 256 px, n_features 100, batch 32, illumination none); PatchCore its
defaults.

    git worktree add /tmp/prelean b12dcd1
    python benchmarks/lean.py --data ../shared/datasets --baseline-src /tmp/prelean/src
    python benchmarks/lean.py --data ../shared/datasets --baseline-src /tmp/prelean/src \
        --model patchcore
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("fit_s", "evaluate_s", "predict_img_s", "peak_rss_mb", "image_auroc")


def child(src: str | None, folder: Path, data: str, model: str = "padim") -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if src:
        env["PYTHONPATH"] = src
    cmd = [sys.executable, str(HERE / "compare_anomalib.py"), "--data", data]
    cmd += ["--child", f"defectscope:onnxruntime:{model}", "--child-category", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"{src or 'this checkout'} failed on {folder.name}: {proc.stderr[-2000:]}")
    return json.loads(lines[0][7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--baseline-src", required=True, help="src folder of the PyTorch path")
    parser.add_argument("--categories", nargs="+", default=["bottle", "screw", "tire"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", choices=["padim", "patchcore"], default="padim")
    args = parser.parse_args()
    folders = [Path(args.data) / c for c in args.categories]
    child(None, folders[0], args.data, args.model)  # warm-up: exports the lean path's graph
    impls = {"pytorch path": args.baseline_src, "lean path": None}
    print("| category | path | " + " | ".join(KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    for folder in folders:
        runs: dict[str, list[dict]] = {name: [] for name in impls}
        for _ in range(args.repeats):
            for name, src in impls.items():  # alternate within each repeat
                runs[name].append(child(src, folder, args.data, args.model))
        medians = {
            name: {k: statistics.median(r[k] for r in results) for k in KEYS}
            for name, results in runs.items()
        }
        for name, row in medians.items():
            cells = " | ".join(
                f"{row[k]:.3f}" if k == "image_auroc" else f"{row[k]:.1f}" for k in KEYS
            )
            print(f"| {folder.name} | {name} | {cells} |", flush=True)
        old, new = medians["pytorch path"], medians["lean path"]
        speedup = (old["fit_s"] + old["evaluate_s"]) / (new["fit_s"] + new["evaluate_s"])
        print(
            f"<!-- {folder.name}: fit+evaluate {speedup:.2f}x faster, "
            f"peak RSS {old['peak_rss_mb'] / new['peak_rss_mb']:.2f}x lower, "
            f"predict {new['predict_img_s'] / old['predict_img_s']:.2f}x -->",
            flush=True,
        )


if __name__ == "__main__":
    main()
