"""The physical limit on this machine, and how close defectscope's predict comes to it.

Measures, on one MVTec-layout category:
  * the feature extractor's forward pass alone on pre-decoded tensors (eager PyTorch and ONNX
    Runtime), in images/s;
  * PNG decoding + resizing alone, on one thread, in images/s;
  * defectscope's end-to-end predict throughput (PNG files in, scores and maps out), and its
    ratio to the fastest forward pass.
Each figure is the median of --repeats runs.

    python benchmarks/limit.py --data ../shared/datasets/tire
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from defectscope import PaDiM
from defectscope.data import load_category
from defectscope.data.images import load_image
from defectscope.data.loader import iter_batches
from defectscope.engine.runtimes.runtime import OnnxModule


def median_rate(fn, count: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return count / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an MVTec-layout category folder")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    category = load_category(args.data)
    paths = [s.path for s in category.test_samples] or list(category.train_paths)
    size, batch = args.image_size, args.batch_size
    print(
        f"category {category.name}: {len(paths)} test images, batch {batch}, {size}x{size}, "
        f"torch threads {torch.get_num_threads()}"
    )

    model = PaDiM(backbone=args.backbone, image_size=size, batch_size=batch, runtime="torch")
    model.fit(category)
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    module = model.module_.embedding  # the PyTorch embedding (backbone + channel selection)
    rates = {}
    for runtime in ("torch", "onnxruntime"):
        key = f"limit-{args.backbone}-{size}"
        run = module if runtime == "torch" else OnnxModule(module, size, key)
        with torch.inference_mode():
            run(images)  # warm-up
            rates[runtime] = median_rate(lambda r=run: r(images), batch, args.repeats)
        print(f"forward pass alone, {runtime:12s}: {rates[runtime]:7.1f} img/s")

    decode = median_rate(lambda: [load_image(p, size) for p in paths], len(paths), args.repeats)
    print(f"decode + resize alone (1 thread):    {decode:7.1f} img/s")

    def overlapped_decode() -> None:
        for _ in iter_batches(paths, size, batch, workers=2):
            pass

    decode2 = median_rate(overlapped_decode, len(paths), args.repeats)
    print(f"decode + resize (2 threads):         {decode2:7.1f} img/s")

    fast = PaDiM(backbone=args.backbone, image_size=size, batch_size=batch, runtime="onnxruntime")
    fast.fit(category)
    predict = median_rate(lambda: fast.score(paths), len(paths), args.repeats)
    best = max(rates.values())
    # With 2 cores there is no idle core to decode on: forward passes (both cores) and decoding
    # (one image per core at the 1-thread rate) share the CPU, so their times add.
    shared = 1 / (1 / best + 1 / (decode * torch.get_num_threads()))
    print(f"forward + decoding sharing the cores: {shared:7.1f} img/s (bound)")
    print(
        f"defectscope predict end to end:      {predict:7.1f} img/s "
        f"= {predict / best:.0%} of the fastest forward pass alone ({best:.1f} img/s), "
        f"{predict / shared:.0%} of the shared-core bound"
    )


if __name__ == "__main__":
    main()
