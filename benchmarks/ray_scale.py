"""Serial vs Ray on this machine: what Ray adds (or costs) for many categories, for one sharded
category, and for batch predictions, every pair measured side by side in one run.

    .venv/bin/python benchmarks/ray_scale.py --data ../shared/datasets --parts all

Parts (``--parts``, any of):

- ``categories``: ``defectscope benchmark`` on the shared categories (PatchCore defaults),
  locally and with ``--executor ray`` (one task per category, 1 CPU each): wall time of the
  whole command (a new process each, Ray's start included) and the image AUROC of each.
- ``synthetic``: the same on 16 small synthetic categories (PaDiM, 64 px, 16 training images):
  the overhead Ray adds per task when the work per task is small.
- ``predict``: the exported model of ``--model`` on the test images of ``--predict-category``
  repeated ``--repeat`` times: ``defectscope predict --save none`` vs ``--executor ray`` with 1
  and 2 actors.
- ``predict-memory``: ``predict --executor ray`` on ``--repeat`` and 4x ``--repeat`` copies of
  those images: the driver's peak RSS and the actors' steady rate.
- ``shards``: PatchCore fitted whole and in ``--shards`` shards (local executor: the result does
  not depend on where shards run) on screw and tire: image/pixel AUROC, AUPRO, fit seconds, bank.

Every command runs in a subprocess; the wall time is the median of ``--repeats`` runs. Results
go to ``benchmarks/results/ray_scale.jsonl`` and a Markdown table is printed.
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

BIN = Path(sys.executable).parent
RESULTS = Path(__file__).parent / "results" / "ray_scale.jsonl"


def timed(cmd: list[str], repeats: int) -> tuple[float, list[float]]:
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        walls.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return statistics.median(walls), walls


def record(row: dict) -> None:
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def aurocs(run: Path) -> dict[str, float]:
    rows = json.loads((run / "results.json").read_text())["rows"]
    return {r["category"]: round(r["image_auroc"], 4) for r in rows}


def part_categories(args, work: Path, data: Path, name: str, extra: list[str]) -> None:
    tool = str(BIN / "defectscope")
    base = [tool, "benchmark", "--data", str(data), "-q", "--project", str(work), *extra]
    for label, flags in (("local", []), ("ray", ["--executor", "ray", "--task-cpus", "1"])):
        wall, walls = timed([*base, "--name", f"{name}-{label}", *flags], args.repeats)
        run = work / "benchmark" / f"{name}-{label}"
        record(
            {
                "part": name,
                "executor": label,
                "wall_s": round(wall, 1),
                "walls": [round(w, 1) for w in walls],
                "image_auroc": aurocs(run),
            }
        )


def part_predict(args, work: Path) -> None:
    tool = str(BIN / "defectscope")
    images = sorted((args.data / args.predict_category / "test").rglob("*.png"))
    # distinct files (links), or the local predict would score each repeated path once
    paths = []
    for k in range(args.repeat):
        for i, image in enumerate(images):
            link = work / "images" / f"copy{k}" / f"{i:04d}.png"
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(image.resolve())
            paths.append(str(link))
    listing = work / "paths.txt"
    listing.write_text("\n".join(paths) + "\n")
    base = [tool, "predict", "--model", args.model, "--list", str(listing), "-q", "--save", "none"]
    base += ["--project", str(work)]
    variants = [
        ("local", []),
        *[(f"ray, {n} actors", ["--executor", "ray", "--actors", str(n)]) for n in (1, 2)],
    ]
    for label, flags in variants:
        wall, walls = timed([*base, *flags], args.repeats)
        record(
            {
                "part": "predict",
                "executor": label,
                "images": len(paths),
                "wall_s": round(wall, 1),
                "images_per_s": round(len(paths) / wall, 2),
                "walls": [round(w, 1) for w in walls],
            }
        )


def part_predict_memory(args, work: Path) -> None:
    """The driver's peak RSS (``/usr/bin/time``: the command's own process, not Ray's workers)
    and the actors' steady rate (run.json) for a short and a 4x longer list of images."""
    tool = str(BIN / "defectscope")
    images = sorted((args.data / args.predict_category / "test").rglob("*.png"))
    for repeat in (args.repeat, 4 * args.repeat):
        paths = []
        for k in range(repeat):
            for i, image in enumerate(images):
                link = work / f"mem{repeat}" / f"copy{k}" / f"{i:04d}.png"
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(image.resolve())
                paths.append(str(link))
        listing = work / f"mem{repeat}.txt"
        listing.write_text("\n".join(paths) + "\n")
        name = f"mem{repeat}"
        cmd = ["/usr/bin/time", "-f", "%M", tool, "predict", "--model", args.model, "--list"]
        cmd += [str(listing), "-q", "--save", "none", "--executor", "ray", "--project", str(work)]
        cmd += ["--name", name]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
        peak_kb = int(done.stderr.strip().splitlines()[-1])
        meta = json.loads((work / "predict" / name / "run.json").read_text())
        record(
            {
                "part": "predict-memory",
                "images": len(paths),
                "wall_s": round(wall, 1),
                "driver_peak_mib": round(peak_kb / 1024),
                "steady_images_per_s": meta["images_per_second"],
            }
        )


def part_shards(args) -> None:
    from defectscope import PatchCore
    from defectscope.data import load_category
    from defectscope.engine.workflows.evaluation import evaluate

    for category in ("screw", "tire"):
        cat = load_category(args.data / category)
        for shards in (1, args.shards):
            model = PatchCore()
            start = time.perf_counter()
            model.fit(cat, shards=shards)
            fit = time.perf_counter() - start
            metrics = evaluate(model, cat).metrics
            record(
                {
                    "part": "shards",
                    "category": category,
                    "shards": shards,
                    "fit_s": round(fit, 1),
                    "bank": model.fit_info_["bank_size"],
                    "radius": round(model.fit_info_["coreset_radius"], 3),
                    **{
                        k: None if metrics.get(k) is None else round(metrics[k], 4)
                        for k in ("image_auroc", "pixel_auroc", "aupro_30")
                    },
                }
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    parser.add_argument("--parts", nargs="+", default=["all"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--model", default="runs/fit/tire/model.onnx")
    parser.add_argument("--predict-category", default="tire")
    parser.add_argument("--repeat", type=int, default=4, help="times the test images are listed")
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()
    parts = (
        {"categories", "synthetic", "predict", "shards"} if "all" in args.parts else set(args.parts)
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "categories" in parts:
            part_categories(args, work, args.data, "categories", [])
        if "synthetic" in parts:
            from defectscope.data.synthetic import make_category

            root = work / "synthetic"
            for i in range(16):
                make_category(
                    root / f"part{i:02d}",
                    size=64,
                    n_train=16,
                    n_test_good=6,
                    n_test_defect=6,
                    seed=i,
                )
            flags = ["--model", "padim", "--image-size", "64", "--n-features", "40"]
            part_categories(args, work, root, "synthetic16", flags)
        if "predict" in parts:
            part_predict(args, work)
        if "predict-memory" in parts:
            part_predict_memory(args, work)
        if "shards" in parts:
            part_shards(args)


if __name__ == "__main__":
    main()
