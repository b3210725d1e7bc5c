"""Handing freed memory back to the operating system between the large steps of a fit.

glibc keeps freed heap memory for reuse, and PyTorch frees and reallocates tens of megabytes
per batch, so the heap fragments and the resident size creeps up to several hundred MB above
what is live. ``malloc_trim(0)`` returns the free parts. Measured on a PaDiM fit of 200 screw
images: peak RSS 1.98 GB without trimming, 1.53 GB with it (and smaller Cholesky and
scatter chunks; measured with a 5 ms RSS sampler around `PaDiM().fit`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        return None


def release_free_memory() -> None:
    """Return free heap memory to the operating system where the C library allows it."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
