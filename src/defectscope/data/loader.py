"""Decoding images into batches on background threads, overlapping I/O with compute."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from defectscope.data.images import load_image

ImageInput = str | Path | np.ndarray


def to_tensor(images: Sequence[np.ndarray]) -> torch.Tensor:
    """``(H, W, 3)`` uint8 arrays -> ``(B, 3, H, W)`` float32 in 0..1."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return batch.float().div_(255.0).contiguous()


def _prepare(item: ImageInput, size: int) -> np.ndarray:
    if isinstance(item, np.ndarray):
        from PIL import Image

        array = item if item.ndim == 3 else np.repeat(item[..., None], 3, axis=2)
        if array.shape[2] == 4:
            array = array[..., :3]
        if array.dtype != np.uint8:
            raise TypeError(f"image arrays must be uint8 (H, W[, 3]); got {array.dtype}")
        if array.shape[:2] != (size, size):
            array = np.asarray(
                Image.fromarray(array).resize((size, size), Image.Resampling.BILINEAR)
            )
        return array
    return load_image(item, size)


def iter_batches(
    items: Sequence[ImageInput], size: int, batch_size: int, workers: int = 2
) -> Iterator[tuple[range, torch.Tensor]]:
    """Yield ``(indices, images)`` batches in input order, decoding ahead on ``workers`` threads.

    PIL releases the GIL while it decodes and resizes, so threads overlap decoding with the
    forward pass without the start-up cost and memory of worker processes. At most two batches
    are decoded ahead, which bounds memory.
    """
    starts = range(0, len(items), batch_size)
    if workers <= 0:
        for start in starts:
            idx = range(start, min(start + batch_size, len(items)))
            yield idx, to_tensor([_prepare(items[i], size) for i in idx])
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: list = []
        submitted = iter(starts)

        def submit_next() -> None:
            start = next(submitted, None)
            if start is not None:
                idx = range(start, min(start + batch_size, len(items)))
                pending.append((idx, [pool.submit(_prepare, items[i], size) for i in idx]))

        submit_next()
        submit_next()
        while pending:
            idx, futures = pending.pop(0)
            arrays = [f.result() for f in futures]
            submit_next()
            yield idx, to_tensor(arrays)
