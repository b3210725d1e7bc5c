"""Decoding images into uint8 batches on background threads, overlapping I/O with compute.

No torch here: the exported-model path runs on numpy and ONNX Runtime alone."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from defectscope.data.images import MIN_IMAGE_SIDE, load_image
from defectscope.errors import DataError

ImageInput = str | Path | np.ndarray


def stack(images: Sequence[np.ndarray]) -> np.ndarray:
    """``(H, W, 3)`` uint8 arrays -> one ``(B, H, W, 3)`` uint8 batch."""
    return np.stack(images)


def _prepare(item: ImageInput, size: int | tuple[int, int], bits: int | None = None) -> np.ndarray:
    if isinstance(item, np.ndarray):
        from PIL import Image

        array = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]
        elif array.ndim == 3 and array.shape[2] == 1:
            array = np.repeat(array, 3, axis=2)
        if array.dtype != np.uint8:
            raise DataError(f"image arrays must be uint8 (H, W[, 3]); got {array.dtype}")
        if array.ndim != 3 or array.shape[2] != 3 or min(array.shape[:2]) < MIN_IMAGE_SIDE:
            raise DataError(
                f"an image array must be (H, W[, 3]) with both sides at least {MIN_IMAGE_SIDE} "
                f"px; got shape {item.shape}"
            )
        height, width = (size, size) if isinstance(size, int) else size
        if array.shape[:2] != (height, width):
            array = np.asarray(
                Image.fromarray(array).resize((width, height), Image.Resampling.BILINEAR)
            )
        return array
    return load_image(item, size, bits)


def iter_batches(
    items: Sequence[ImageInput],
    size: int | tuple[int, int],
    batch_size: int,
    workers: int = 2,
    bits: int | None = None,
) -> Iterator[tuple[range, np.ndarray]]:
    """Yield ``(indices, images (B, H, W, 3) uint8)`` in input order, resized to ``size`` (an
    int: square; else ``(height, width)``), decoded on ``workers`` threads ahead of use.

    PIL releases the GIL while it decodes and resizes, so threads overlap decoding with the
    forward pass without the start-up cost and memory of worker processes. At most two batches
    are decoded ahead, which bounds memory. ``bits``: the bit depth recorded for the source
    (a model's training images), by which 16- and 32-bit images are scaled to 8 bits.
    """
    starts = range(0, len(items), batch_size)
    if workers <= 0:
        for start in starts:
            idx = range(start, min(start + batch_size, len(items)))
            yield idx, stack([_prepare(items[i], size, bits) for i in idx])
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list = []
        submitted = iter(starts)

        def submit_next() -> None:
            start = next(submitted, None)
            if start is not None:
                idx = range(start, min(start + batch_size, len(items)))
                pending.append((idx, [pool.submit(_prepare, items[i], size, bits) for i in idx]))

        submit_next()
        submit_next()
        while pending:
            idx, futures = pending.pop(0)
            arrays = [f.result() for f in futures]
            submit_next()
            yield idx, stack(arrays)
