"""Image decoding options (issue 12): milliseconds per image to decode a PNG and resize it to the
model's input, single thread, median of 3 passes over the same files.

    .venv/bin/python benchmarks/decode.py --images ../shared/datasets/tire/test --size 320

Compared: defectscope's loader (Pillow: decode, convert, bilinear resize), Pillow with
`Image.reduce` before the resize, OpenCV (`cv2.imread` + `cv2.resize`, optional extra `video`),
and reading a cached resized array (`np.load` of an `.npy`: what a decode-once cache would cost).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--limit", type=int, default=120)
    args = parser.parse_args()

    from PIL import Image

    from defectscope.data.images import load_image

    files = sorted(Path(args.images).rglob("*.png"))[: args.limit]
    size = args.size

    def pillow_reduce(path):
        with Image.open(path) as image:
            image = image.convert("RGB")
            factor = max(1, min(image.size) // size)
            if factor > 1:
                image = image.reduce(factor)
            return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR))

    options = {
        "defectscope (Pillow)": lambda p: load_image(p, size),
        "Pillow + reduce": pillow_reduce,
    }
    try:
        import cv2

        cv2.setNumThreads(1)

        def opencv(path):
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            return cv2.resize(
                cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_LINEAR
            )

        options["OpenCV"] = opencv
    except ImportError:
        print("OpenCV not installed: skipped")
    cache = Path(tempfile.mkdtemp(prefix="defectscope-decode-"))
    for i, path in enumerate(files):
        np.save(cache / f"{i}.npy", load_image(path, size))
    cached = sorted(cache.glob("*.npy"))
    options["cached .npy"] = None

    reference = [load_image(p, size).astype(np.int16) for p in files[:10]]
    print(
        f"{len(files)} images from {args.images}, e.g. {Image.open(files[0]).size}, "
        f"to {size}x{size}\n"
    )
    print("| decoder | ms per image (median of 3 passes) | max abs difference vs defectscope |")
    print("|---|---|---|")
    for name, fn in options.items():
        passes = []
        for _ in range(3):
            start = time.perf_counter()
            if fn is None:
                for path in cached:
                    np.load(path)
            else:
                for path in files:
                    fn(path)
            passes.append((time.perf_counter() - start) / len(files) * 1000)
        if fn is None:
            diff = 0
        else:
            diff = max(
                int(np.abs(fn(p).astype(np.int16) - r).max()) for p, r in zip(files[:10], reference)
            )
        print(f"| {name} | {statistics.median(passes):.2f} | {diff} |")


if __name__ == "__main__":
    main()
