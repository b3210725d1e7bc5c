"""Detection-quality study: PatchCore and PaDiM settings on real categories, one fresh process
per (setting, category), results appended as JSON lines (a partial run keeps what it measured).

    python benchmarks/study.py --data ../shared/datasets --out study.jsonl
    python benchmarks/study.py --table study.jsonl      # the Markdown table of benchmarks/README

Each row: image AUROC, pixel AUROC, AUPRO@0.3 (where masks exist), fit and evaluate seconds,
peak RSS of the process. Settings are option dicts passed to the estimator, so every row can be
reproduced with ``defectscope benchmark --model NAME --OPTION VALUE``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: (label, detector, options): the first of each detector is its default
SETTINGS = [
    ("patchcore default (lite0, 320 px, gain, greedy 1%, d=32, sigma 4)", "patchcore", {}),
    ("patchcore illumination none", "patchcore", {"illumination": "none"}),
    ("patchcore illumination standardize", "patchcore", {"illumination": "standardize"}),
    ("patchcore 256 px", "patchcore", {"image_size": 256}),
    ("patchcore 384 px", "patchcore", {"image_size": 384}),
    (
        "patchcore approximate coreset (10% presample)",
        "patchcore",
        {"coreset_method": "approximate"},
    ),
    ("patchcore lite2", "patchcore", {"backbone": "efficientnet_lite2"}),
    ("patchcore sigma 8", "patchcore", {"sigma": 8.0}),
    ("patchcore reweight (b=9)", "patchcore", {"reweight": True}),
    ("padim illumination none", "padim", {"illumination": "none"}),
    ("padim default (lite0, 256 px, gain)", "padim", {}),
    ("patchcore illumination local", "patchcore", {"illumination": "local"}),
    ("padim illumination standardize", "padim", {"illumination": "standardize"}),
    ("padim illumination local", "padim", {"illumination": "local"}),
    ("patchcore lite1", "patchcore", {"backbone": "efficientnet_lite1"}),
    # 15-: after held-out images joined the bank (union of coresets) and the 0.95 threshold rule
    ("patchcore default, held-out images in the bank", "patchcore", {}),
    (
        "patchcore layers blocks.1+2+4",
        "patchcore",
        {"layers": ["blocks.1", "blocks.2", "blocks.4"]},
    ),
    ("patchcore layers blocks.2+3", "patchcore", {"layers": ["blocks.2", "blocks.3"]}),
    ("patchcore coreset 5%", "patchcore", {"coreset_ratio": 0.05}),
    ("patchcore 448 px", "patchcore", {"image_size": 448}),
    ("patchcore neighbourhood 5", "patchcore", {"neighbourhood": 5}),
    (
        "patchcore layers blocks.2+3+4",
        "patchcore",
        {"layers": ["blocks.2", "blocks.3", "blocks.4"]},
    ),
    # 22-25: landscape 4:3 inputs (width x height). Tire's images are portrait, 384 wide and 512
    # high, so these squeeze its height further than a square does: its aspect is NOT kept
    (
        "patchcore 384x288 (landscape; tire is portrait)",
        "patchcore",
        {"image_size": 384, "image_height": 288},
    ),
    (
        "patchcore 448x336 (landscape; tire is portrait)",
        "patchcore",
        {"image_size": 448, "image_height": 336},
    ),
    (
        "patchcore 512x384 (landscape; tire is portrait)",
        "patchcore",
        {"image_size": 512, "image_height": 384},
    ),
    (
        "patchcore 320x240 (landscape; tire is portrait)",
        "patchcore",
        {"image_size": 320, "image_height": 240},
    ),
    ("patchcore k_nearest 3", "patchcore", {"k_nearest": 3}),
    ("patchcore k_nearest 9", "patchcore", {"k_nearest": 9}),
    # 28-: the coreset's projection and first pick drawn with numpy (the lean path), seeds 0-3
    ("patchcore default, numpy coreset draws, seed 0", "patchcore", {}),
    ("patchcore default, numpy coreset draws, seed 1", "patchcore", {"seed": 1}),
    ("patchcore default, numpy coreset draws, seed 2", "patchcore", {"seed": 2}),
    ("patchcore default, numpy coreset draws, seed 3", "patchcore", {"seed": 3}),
    # 32-35: tire's 3:4 (portrait, width x height) kept
    ("patchcore 240x320 (3:4 kept)", "patchcore", {"image_size": 240, "image_height": 320}),
    ("patchcore 288x384 (3:4 kept)", "patchcore", {"image_size": 288, "image_height": 384}),
    ("patchcore 336x448 (3:4 kept)", "patchcore", {"image_size": 336, "image_height": 448}),
    ("patchcore 384x512 (tire's own size)", "patchcore", {"image_size": 384, "image_height": 512}),
]

CHILD = """
import json, resource, sys, time
from defectscope.engine.fitting.estimator import make_detector
from defectscope.engine.workflows.evaluation import evaluate
from defectscope.data import load_category
name, options, folder = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
category = load_category(folder, require_test=True)
model = make_detector(name, options)
start = time.perf_counter()
model.fit(category)
fit_s = time.perf_counter() - start
start = time.perf_counter()
result = evaluate(model, category)
eval_s = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps({**result.metrics, "fit_s": fit_s, "evaluate_s": eval_s,
      "peak_rss_mb": peak}))
"""


def run(data: Path, categories: list[str], out: Path, only: list[int] | None) -> None:
    for i, (label, name, options) in enumerate(SETTINGS):
        if only is not None and i not in only:
            continue
        for category in categories:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", CHILD, name, json.dumps(options), str(data / category)],
                capture_output=True,
                text=True,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            row = {"setting": label, "detector": name, "options": options, "category": category}
            if line is None:
                row["error"] = proc.stderr.strip().splitlines()[-1:] or ["no output"]
            else:
                row.update(json.loads(line[7:]))
            row["wall_s"] = time.perf_counter() - start
            with open(out, "a") as handle:
                handle.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


def table(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]

    def f(v, digits=3):
        return "n/a" if v is None else f"{v:.{digits}f}"

    lines = [
        "| setting | category | image AUROC | pixel AUROC | AUPRO@0.3 | fit s | evaluate s | "
        "peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['setting']} | {r['category']} | error: {r['error'][0]} |||||")
            continue
        lines.append(
            f"| {r['setting']} | {r['category']} | {f(r['image_auroc'])} | "
            f"{f(r['pixel_auroc'])} | {f(r['aupro_30'])} | {f(r['fit_s'], 1)} | "
            f"{f(r['evaluate_s'], 1)} | {f(r['peak_rss_mb'], 0)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--categories", nargs="+", default=["bottle", "screw", "tire"])
    parser.add_argument("--out", type=Path, default=Path("study.jsonl"))
    parser.add_argument("--only", type=int, nargs="+", help="indices into SETTINGS")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results file")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    run(args.data, args.categories, args.out, args.only)


if __name__ == "__main__":
    main()
