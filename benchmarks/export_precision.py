"""Exported files of an fp32 and an int8 model, side by side in one run (issue 26).

    .venv/bin/python benchmarks/export_precision.py --data ../shared/datasets/tire --repeats 5

Fits default PatchCore with ``precision=fp32`` and ``precision=int8`` (seed 0), exports both
(``defectscope.export_onnx``), evaluates each exported file on the category's labelled test
split, then scores the test images with each file in fresh processes (what a user starts),
alternating fp32 and int8; reported: the medians of the scoring loop's seconds and of the
whole process's wall time, their ratios, and each file's image / pixel AUROC. One JSON row is
appended to benchmarks/results/export_precision.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "export_precision.jsonl"

CHILD = """
import sys, time
from defectscope.engine.workflows.loading import load
from defectscope.engine.workflows.predicting import expand_inputs
start = time.perf_counter()
model = load(sys.argv[1])
files, _ = expand_inputs([sys.argv[2]])
loaded = time.perf_counter()
model.score(files)
print(len(files), time.perf_counter() - loaded)
"""


def timed(model: Path, images: Path) -> tuple[float, float]:
    """``(scoring seconds, process wall seconds)`` of one fresh process."""
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(images)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return float(out[1]), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/tire"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    import defectscope
    from defectscope.engine.runtimes.exported import ExportedModel

    row: dict = {"category": args.data.name, "repeats": args.repeats}
    with tempfile.TemporaryDirectory(prefix="export-precision-") as tmp:
        files = {}
        for precision in ("fp32", "int8"):
            model = defectscope.PatchCore(seed=0, precision=precision, progress=False)
            model.fit(args.data)
            used = model.fit_info_.precision_used
            files[precision] = defectscope.export_onnx(model, Path(tmp) / f"{precision}.onnx")
            exported = ExportedModel(files[precision])
            metrics = defectscope.evaluate(exported, args.data).metrics
            row[precision] = {
                "model_used": used,
                "file_used": exported.fit_info_.precision_used,
                "file_mb": round(files[precision].stat().st_size / 1e6, 2),
                "image_auroc": round(metrics["image_auroc"], 4),
                "pixel_auroc": None
                if metrics.get("pixel_auroc") is None
                else round(metrics["pixel_auroc"], 4),
            }
            print(precision, row[precision], flush=True)
        times: dict[str, list[tuple[float, float]]] = {"fp32": [], "int8": []}
        for i in range(args.repeats):
            order = ("fp32", "int8") if i % 2 == 0 else ("int8", "fp32")
            for precision in order:
                times[precision].append(timed(files[precision], args.data / "test"))
    for precision, runs in times.items():
        row[precision]["score_s"] = round(statistics.median(r[0] for r in runs), 3)
        row[precision]["process_s"] = round(statistics.median(r[1] for r in runs), 3)
    row["speedup_score"] = round(row["fp32"]["score_s"] / row["int8"]["score_s"], 2)
    row["speedup_process"] = round(row["fp32"]["process_s"] / row["int8"]["process_s"], 2)
    print(json.dumps(row))
    with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
