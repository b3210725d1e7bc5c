"""Peak RSS of `evaluate` against the number of test images (streaming evaluation, issue 12).

    .venv/bin/python benchmarks/eval_memory.py --counts 500 5000

Generates one synthetic category per count (128x128 images, every defective image with a mask,
half good and half defective), fits PaDiM (defaults, 256 px) once on 40 training images, then
runs `evaluate` in a fresh process per count and records its peak RSS (VmHWM) and time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# VmHWM (this process's own high-water mark), not ru_maxrss: Linux carries ru_maxrss across
# exec, so a child forked from this (torch-holding) parent would report the parent's size.
CHILD = """
import json, sys, time
import defectscope
from defectscope.engine.workflows.evaluation import evaluate
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
model = defectscope.load(sys.argv[1])
loaded = hwm()
start = time.perf_counter()
result = evaluate(model, sys.argv[2])
seconds = time.perf_counter() - start
peak = hwm()
print("RESULT " + json.dumps({"seconds": seconds, "peak_mib": peak, "loaded_mib": loaded,
      **result.metrics,
      "bound": result.extra.get("pixel_auroc_bound")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--detector", default="padim")
    parser.add_argument("--keep", action="store_true", help="keep the generated data")
    parser.add_argument(
        "--exported", action="store_true", help="evaluate the exported .onnx file (no torch)"
    )
    args = parser.parse_args()

    from defectscope.data.synthetic import make_category
    from defectscope.engine.fitting.estimator import make_detector

    work = Path(tempfile.mkdtemp(prefix="defectscope-evalmem-"))
    try:
        train = work / "train_only"
        make_category(
            train, kind="texture", size=128, n_train=40, n_test_good=1, n_test_defect=1, seed=0
        )
        model = make_detector(args.detector, {}).fit(train).save(work / "model.safetensors")
        if args.exported:
            from defectscope.engine.runtimes.exported import export_onnx
            from defectscope.engine.workflows.loading import load

            model = export_onnx(load(model), work / "model.onnx")
        rows = []
        for count in args.counts:
            folder = work / f"n{count}"
            start = time.perf_counter()
            make_category(
                folder,
                kind="texture",
                size=128,
                n_train=3,
                n_test_good=count // 2,
                n_test_defect=count // 6,
                seed=1,
            )
            made = time.perf_counter() - start
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(model), str(folder)],
                capture_output=True,
                text=True,
            )
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(out.stderr[-3000:])
            n_test = sum(1 for _ in (folder / "test").rglob("*.png"))
            row = {"count": n_test, "generated_s": made, **json.loads(line[7:])}
            rows.append(row)
            print(json.dumps(row), flush=True)
            shutil.rmtree(folder)
        print(
            "\n| test images | evaluate s | peak RSS after load MiB | peak RSS MiB | "
            "pixel AUROC | its error bound |"
        )
        print("|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['count']} | {r['seconds']:.1f} | {r['loaded_mib']:.0f} | "
                f"{r['peak_mib']:.0f} | {r['pixel_auroc']:.4f} | {r['bound']:.1e} |"
            )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
