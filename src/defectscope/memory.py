"""Handing freed memory back to the operating system between the large steps of a fit.

glibc keeps freed heap memory for reuse, and PyTorch frees and reallocates tens of megabytes
per batch, so the heap fragments and the resident size creeps up to several hundred MB above
what is live. ``malloc_trim(0)`` returns the free parts. Measured on a PaDiM fit of 200 screw
images: peak RSS 1.98 GB without trimming, 1.53 GB with it (and smaller Cholesky and
scatter chunks; measured with a 5 ms RSS sampler around `PaDiM().fit`).

glibc also raises its mapping threshold each time a mapped block is freed (up to 32 MB), after
which the feature batches and search buffers of a fit (1-32 MB each, made and freed per batch)
land on the heap and fragment it between trims. :func:`map_large_blocks` fixes the threshold
at 1 MB: such blocks are mapped on their own and unmapped when freed. The command line sets it
for its process; measured on PatchCore fits of 160 and 1,280 screw images (benchmarks/README.md,
"Peak RSS 160 -> 1,280: where the rest went"), peak RSS 390 and 484 MB without it, 348 and 378
MB with it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _libc(name: str):
    """The C library's function ``name``, or None where there is none (not glibc: macOS, musl,
    Windows; their allocators decide, and there is nothing to trim or tune)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def release_free_memory() -> None:
    """Return free heap memory to the operating system where the C library allows it."""
    trim = _libc("malloc_trim")
    if trim is not None:
        trim(0)


#: mallopt's parameter number of the mapping threshold (glibc's M_MMAP_THRESHOLD)
_M_MMAP_THRESHOLD = -3
#: blocks from this size up are mapped on their own (glibc's default starts at 128 kB and
#: rises with every mapped block freed, to 32 MB)
MAP_FROM_BYTES = 1 << 20


def _mallopt():
    mallopt = _libc("mallopt")
    if mallopt is not None:
        mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
        mallopt.restype = ctypes.c_int
    return mallopt


def map_large_blocks(threshold: int = MAP_FROM_BYTES) -> bool:
    """Have the C library map each allocation of ``threshold`` bytes or more on its own and
    unmap it when it is freed, for the rest of the process (glibc; elsewhere nothing changes).
    True when it was set. A process setting, made by the command line for its own process; a
    program embedding defectscope calls it itself if it wants the same bound."""
    mallopt = _mallopt()
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, int(threshold)) == 1)
