"""The long fuzz run: N mutated model files and N mutated images (default 1,000 each).

    .venv/bin/python -m tests.fuzz.run --cases 1000

Fits a small PaDiM on a synthetic category, then counts the outcome of every case: loaded and
scored with finite values ('ok'), or which of defectscope's exceptions; anything else (another
exception class, a non-finite verdict) is a failure, printed with its seed to reproduce it.
Exit code 1 when there is any failure. Results are recorded in tests/fuzz/README.md.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="cases per kind (default 1000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--kinds",
        default="model,image,header,export",
        help="comma-separated: model (bytes), image, header (one field of a model file's "
        "header, through the CLI's predict), export (one field of an export's metadata, same)",
    )
    args = parser.parse_args()

    from defectscope import PaDiM
    from defectscope.data.synthetic import make_category
    from defectscope.engine.runtimes.exported import export_onnx
    from tests.fuzz.fields import edit_export_field, edit_model_field, predict_outcome
    from tests.fuzz.mutate import image_mutations, model_mutations
    from tests.test_fuzz import IMAGES, check_image, check_model, field_parts

    work = Path(tempfile.mkdtemp(prefix="defectscope-fuzz-"))
    make_category(work / "cat", kind="texture", size=64, n_train=16, n_test_good=2, n_test_defect=2)
    model = PaDiM(image_size=64, n_features=40, batch_size=8, progress=False)
    model_bytes = model.fit(work / "cat").save(work / "model.safetensors").read_bytes()
    export_bytes = export_onnx(model, work / "model.onnx").read_bytes()
    image = sorted((work / "cat" / "test" / "good").glob("*.png"))[0]
    parts = field_parts(work / "cat", work)

    failures = []
    for kind in args.kinds.split(","):
        outcomes: collections.Counter[str] = collections.Counter()
        start = time.perf_counter()
        for case in range(args.cases):
            seed = args.seed * 1_000_003 + case
            rng = np.random.default_rng(seed)
            try:
                if kind == "model":
                    mutations = model_mutations(model_bytes)
                    which = case % len(mutations)
                    data, what = mutations[which](model_bytes, rng)
                    outcome = check_model(data, image)
                elif kind == "header":
                    data, what = edit_model_field(model_bytes, rng)
                    outcome = predict_outcome(data, ".safetensors", parts)
                elif kind == "export":
                    data, what = edit_export_field(export_bytes, rng)
                    outcome = predict_outcome(data, ".onnx", parts)
                else:
                    fmt = sorted(IMAGES)[case % len(IMAGES)]
                    which = (case // len(IMAGES)) % len(image_mutations())
                    data, what = image_mutations()[which](IMAGES[fmt], rng)
                    outcome = check_image(data, "." + fmt.lower().replace("jpeg", "jpg"))
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - the point is to catch anything
                outcome = f"FAILURE {type(exc).__name__}"
                failures.append((kind, seed, what, traceback.format_exc(limit=3)))
            outcomes[outcome] += 1
        seconds = time.perf_counter() - start
        print(f"{kind}: {args.cases} cases in {seconds:.0f} s: {dict(outcomes.most_common())}")
    for kind, seed, what, trace in failures[:20]:  # the first 20 in full, then one line each
        print(f"\n{kind} seed {seed}: {what}\n{trace}")
    for kind, seed, what, trace in failures[20:]:
        print(f"{kind} seed {seed}: {what}: {trace.strip().splitlines()[-1][:120]}")
    kinds = collections.Counter(
        f"{k}: {t.strip().splitlines()[-1][:120]}" for k, _, _, t in failures
    )
    for line, count in kinds.most_common():
        print(f"{count:5d}  {line}")
    print(f"\n{len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
