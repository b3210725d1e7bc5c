"""A detector's feature graph in fp32, int8 and bf16 on this CPU (issue 26, first measurements).

    .venv/bin/pip install openvino          # benchmark only; defectscope does not need it
    .venv/bin/python benchmarks/precision_study.py --data ../shared/datasets --categories tire
    .venv/bin/python benchmarks/precision_study.py --model padim --categories tire screw
    .venv/bin/python benchmarks/precision_study.py --calibration percentile --categories tire
    .venv/bin/pip install nncf               # benchmark only, for the NNCF variant
    .venv/bin/python benchmarks/precision_study.py --categories tire \
        --variants "onnxruntime fp32" "openvino int8 (nncf)"

For each category (the default ``--model``, PatchCore or PaDiM, seed 0) the cached fp32
feature graph of the lean path is run three ways, each for the whole fit and evaluation (the
memory bank or the Gaussians are built from features of the same precision as the test
features):

- ``onnxruntime fp32``: the lean path as it ships;
- ``onnxruntime int8``: the graph statically quantized by ONNX Runtime (QDQ, per-channel
  weights, activations calibrated on the category's first 32 training images, after the
  lighting correction, by ``--calibration``: MinMax, Percentile or Entropy), run by ONNX Runtime;
- ``openvino bf16``: the fp32 graph compiled by OpenVINO with ``INFERENCE_PRECISION_HINT`` bf16
  (the AMX tiles), where openvino is installed.
- ``openvino int8 (nncf)``: the graph quantized by NNCF (``nncf.quantize`` on the OpenVINO model,
  calibrated on the same training images), run by OpenVINO, where nncf is installed.

Printed per category and variant: forward-pass images/s (batch 32, median of 5 runs, every
variant in the same process, one after another), fit and evaluate seconds, image and pixel
AUROC. The test split chooses nothing. Rows are appended to results/precision_study.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/datasets")
    parser.add_argument("--categories", nargs="+", default=["tire", "screw", "bottle"])
    parser.add_argument("--model", choices=["patchcore", "padim"], default="patchcore")
    parser.add_argument(
        "--calibration", choices=["minmax", "percentile", "entropy"], default="minmax"
    )
    parser.add_argument(
        "--variants", nargs="+", help="only these (names as printed), e.g. 'onnxruntime fp32'"
    )
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "precision_study.jsonl"
    )
    args = parser.parse_args()

    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from defectscope.data import load_category
    from defectscope.data.loader import iter_batches
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.engine.rules.settings import EngineOptions
    from defectscope.engine.runtimes import lean
    from defectscope.engine.runtimes.onnx_session import run_micro_batches, session_options
    from defectscope.engine.runtimes.runtime import cached_graph
    from defectscope.engine.workflows.evaluation import evaluate
    from defectscope.models.lean import LeanEmbedding, gain_target, illuminate, to_float

    work = Path(tempfile.mkdtemp(prefix="precision-"))
    plain_embedding = lean._embedding

    for name in args.categories:
        category = load_category(Path(args.data) / name, require_test=True)
        first = make_detector(args.model, {"seed": 0})
        config, engine = first.options()
        key = lean.lean_key(args.model, config, EngineOptions())
        graph = cached_graph(key)
        if not graph.is_file():  # one fit exports and caches the graph
            first.fit(list(category.train_paths)[:8])
        shape = config.input_shape
        _, batch = next(iter(iter_batches(list(category.train_paths)[:32], shape, 32, 2, None)))
        target = gain_target(batch)
        calib = illuminate(to_float(batch), config.illumination, target)

        class Reader(CalibrationDataReader):
            def __init__(self, images: np.ndarray) -> None:
                self.items = iter([{"images": images[i : i + 1]} for i in range(len(images))])

            def get_next(self):
                return next(self.items, None)

        int8_path = work / f"{name}-{args.model}-{args.calibration}-int8.onnx"
        quantize_static(
            str(graph),
            str(int8_path),
            Reader(calib),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method={
                "minmax": CalibrationMethod.MinMax,
                "percentile": CalibrationMethod.Percentile,
                "entropy": CalibrationMethod.Entropy,
            }[args.calibration],
        )
        # the cached graph's metadata (feature size) travels with the quantized one
        source, target_model = onnx.load(str(graph)), onnx.load(str(int8_path))
        del target_model.metadata_props[:]
        target_model.metadata_props.extend(source.metadata_props)
        onnx.save(target_model, str(int8_path))

        runners = {
            "onnxruntime fp32": ort.InferenceSession(
                str(graph), session_options(), providers=["CPUExecutionProvider"]
            ),
            "onnxruntime int8": ort.InferenceSession(
                str(int8_path), session_options(), providers=["CPUExecutionProvider"]
            ),
        }
        try:
            import openvino as ov

            compiled = ov.Core().compile_model(
                str(graph), "CPU", {"INFERENCE_PRECISION_HINT": "bf16", "INFERENCE_NUM_THREADS": 2}
            )
            runners["openvino bf16"] = compiled
            try:
                import nncf

                # NNCF's post-training quantization of the OpenVINO model (int8 weights and
                # activations, calibrated on the same training images), run by OpenVINO
                quantized = nncf.quantize(
                    ov.Core().read_model(str(graph)),
                    nncf.Dataset([calib[i : i + 1] for i in range(len(calib))]),
                    subset_size=len(calib),
                )
                runners["openvino int8 (nncf)"] = ov.Core().compile_model(
                    quantized, "CPU", {"INFERENCE_NUM_THREADS": 2}
                )
            except ImportError:
                pass
        except ImportError:
            pass

        if args.variants:
            runners = {k: v for k, v in runners.items() if k in args.variants}

        def features_of(runner):
            if isinstance(runner, ort.InferenceSession):
                return lambda images: run_micro_batches(runner, images)[0]
            request = runner.create_infer_request()
            return lambda images: np.asarray(request.infer({0: images})[0])

        speed = {}
        for _ in range(5):  # interleaved: every variant sees the same machine load
            for label, runner in runners.items():
                run = features_of(runner)
                start = time.perf_counter()
                run(calib)
                speed.setdefault(label, []).append(len(calib) / (time.perf_counter() - start))

        for label, runner in runners.items():
            features = features_of(runner)

            def embedding(name_, config_, engine_, on_stage, features=features):
                found = plain_embedding(name_, config_, engine_, on_stage)
                if found is None:
                    return None
                old, meta = found
                return LeanEmbedding(features, old.mode, old.feature_size), meta

            lean._embedding = embedding
            try:
                model = make_detector(args.model, {"seed": 0})
                start = time.perf_counter()
                model.fit(category)
                fit_s = time.perf_counter() - start
                result = evaluate(model, category)
            finally:
                lean._embedding = plain_embedding
            row = {
                "category": name,
                "model": args.model,
                "variant": label
                if label != "onnxruntime int8"
                else f"{label} ({args.calibration})",
                "forward_images_per_s": round(statistics.median(speed[label]), 1),
                "fit_s": round(fit_s, 1),
                "evaluate_s": round(result.evaluate_seconds or 0.0, 1),
                "image_auroc": result.metrics["image_auroc"],
                "pixel_auroc": result.metrics["pixel_auroc"],
            }
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
