"""Model size on disk and in memory for wide_resnet50_2 PaDiM: defectscope vs anomalib.

Both fit wide_resnet50_2 (random weights: sizes and timing do not depend on them) with the
paper's n_features=550 on a few images at 256x256, each in a fresh process. Reported: the
fitted statistics' bytes in memory, the saved file's bytes (defectscope: its .safetensors
model; anomalib: torch.save of the Lightning model's state_dict, what its checkpoints hold),
fit time and peak RSS.

    /path/to/venv-with-anomalib/bin/python benchmarks/model_size.py --data ../shared/datasets/screw
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

N_FEATURES = 550


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run_defectscope(paths: list[Path]) -> dict:
    from defectscope import PaDiM

    model = PaDiM(
        backbone="wide_resnet50_2",
        weights="random",
        n_features=N_FEATURES,
        batch_size=8,
        runtime="torch",
    )
    start = time.perf_counter()
    model.fit(paths)
    seconds = time.perf_counter() - start
    path = model.save(Path(tempfile.mkdtemp()) / "wrn.safetensors")
    memory = tensor_bytes(list(model.module_.fitted_state().values()))
    return {"fit_s": seconds, "memory_mb": memory / 2**20, "disk_mb": path.stat().st_size / 2**20}


def run_anomalib(paths: list[Path]) -> dict:
    import torch
    from anomalib.models import Padim

    from defectscope.data.loader import iter_batches

    model = Padim(
        backbone="wide_resnet50_2",
        pre_trained=False,
        n_features=N_FEATURES,
        evaluator=False,
        visualizer=False,
    )
    torch_model = model.model.train()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    start = time.perf_counter()
    with torch.no_grad():
        for _, batch in iter_batches(paths, 256, 8, 2):
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
            torch_model((x - mean) / std)
        torch_model.fit()
    seconds = time.perf_counter() - start
    path = Path(tempfile.mkdtemp()) / "wrn.pt"
    torch.save(model.state_dict(), path)
    gaussian = torch_model.gaussian
    memory = tensor_bytes([gaussian.mean, gaussian.inv_covariance])
    return {"fit_s": seconds, "memory_mb": memory / 2**20, "disk_mb": path.stat().st_size / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a category folder")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from defectscope.data import load_category

    paths = list(load_category(args.data).train_paths)[: args.images]
    if args.child:
        out = run_anomalib(paths) if args.child == "anomalib" else run_defectscope(paths)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(out))
        return
    print(f"wide_resnet50_2, n_features={N_FEATURES}, 256x256, {len(paths)} images")
    print("| implementation | statistics in memory MB | file on disk MB | fit s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for impl in ("defectscope", "anomalib"):
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--data",
                args.data,
                "--images",
                str(args.images),
                "--child",
                impl,
            ],
            capture_output=True,
            text=True,
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if not lines:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{impl} failed")
        r = json.loads(lines[0][7:])
        print(
            f"| {impl} | {r['memory_mb']:.0f} | {r['disk_mb']:.0f} | {r['fit_s']:.1f} | "
            f"{r['peak_rss_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
