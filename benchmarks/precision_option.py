"""The ``precision`` option end to end (issue 26): every precision fitted and evaluated in one
process, one after another, on the shared categories.

    .venv/bin/pip install openvino      # for bf16; defectscope does not need it
    .venv/bin/python benchmarks/precision_option.py --data ../shared/datasets --seeds 0

For each category, seed and precision (fp32, int8, bf16, auto; order rotated per seed so no
precision always runs first): the default PatchCore (or ``--model``) fitted with
``precision=...``, then evaluated on the test split, which chooses nothing. Printed and appended
to results/precision_option.jsonl: fit and evaluate seconds, image and pixel AUROC, the F1 at
the model's own threshold, the precision used and, for auto, its agreement figures.

    .venv/bin/python benchmarks/precision_option.py --timing --categories tire --repeats 5

``--timing``: the models of seed 0 (fp32, int8, bf16) fitted once, then, ``--repeats`` times
in rotating order, each one's forward pass (the feature function alone, 32 training images)
and its whole evaluation of the test split are timed; medians and ratios to fp32 printed and
appended to results/precision_timing.jsonl.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "precision_option.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["tire", "screw", "bottle"])
    parser.add_argument("--model", choices=["patchcore", "padim"], default="patchcore")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8", "bf16", "auto"])
    parser.add_argument("--timing", action="store_true")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.timing:
        timing(args)
        return

    from defectscope.data import load_category
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.engine.workflows.evaluation import evaluate

    for seed in args.seeds:
        order = args.precisions[seed % len(args.precisions) :]
        order += args.precisions[: seed % len(args.precisions)]
        for name in args.categories:
            category = load_category(Path(args.data) / name, require_test=True)
            for precision in order:
                model = make_detector(args.model, {"seed": seed, "precision": precision})
                start = time.perf_counter()
                model.fit(category)
                fit_s = time.perf_counter() - start
                result = evaluate(model, category)
                record = model.fit_info_.precision or {}
                row = {
                    "category": name,
                    "model": args.model,
                    "seed": seed,
                    "precision": precision,
                    "used": record.get("used"),
                    "agreement": record.get("agreement"),
                    "fit_s": round(fit_s, 1),
                    "evaluate_s": round(result.evaluate_seconds or 0.0, 1),
                    "image_auroc": result.metrics["image_auroc"],
                    "pixel_auroc": result.metrics["pixel_auroc"],
                    "f1_own": result.metrics["image_f1_fixed"],
                    "f1_best": result.metrics["image_f1_best"],
                }
                print(json.dumps(row), flush=True)
                with open(OUT, "a") as f:
                    f.write(json.dumps(row) + "\n")


def timing(args: argparse.Namespace) -> None:
    import statistics

    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.engine.workflows.evaluation import evaluate

    precisions = [p for p in args.precisions if p != "auto"]
    for name in args.categories:
        category = load_category(Path(args.data) / name, require_test=True)
        models = {}
        for precision in precisions:
            start = time.perf_counter()
            models[precision] = make_detector(args.model, {"seed": 0, "precision": precision})
            models[precision].fit(category)
            print(f"{name} {precision}: fit {time.perf_counter() - start:.1f} s", flush=True)
        shape = models["fp32"].config_.input_shape
        _, batch = next(iter(iter_batches(list(category.train_paths)[:32], shape, 32, 2, None)))
        forward: dict[str, list[float]] = {p: [] for p in precisions}
        whole: dict[str, list[float]] = {p: [] for p in precisions}
        for r in range(args.repeats):
            for precision in precisions[r % len(precisions) :] + precisions[: r % len(precisions)]:
                module = models[precision].module_
                start = time.perf_counter()
                module.embedding(batch, module.target)
                forward[precision].append(len(batch) / (time.perf_counter() - start))
                start = time.perf_counter()
                evaluate(models[precision], category)
                whole[precision].append(time.perf_counter() - start)
        for precision in precisions:
            row = {
                "category": name,
                "model": args.model,
                "precision": precision,
                "used": models[precision].fit_info_.precision_used,
                "repeats": args.repeats,
                "forward_images_per_s": round(statistics.median(forward[precision]), 1),
                "forward_vs_fp32": round(
                    statistics.median(forward[precision]) / statistics.median(forward["fp32"]), 2
                ),
                "evaluate_s": round(statistics.median(whole[precision]), 2),
                "evaluate_speedup": round(
                    statistics.median(whole["fp32"]) / statistics.median(whole[precision]), 2
                ),
            }
            print(json.dumps(row), flush=True)
            with open(OUT.with_name("precision_timing.jsonl"), "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
