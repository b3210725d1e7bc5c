"""The pieces of a batch scored at once, one per core, with numpy's BLAS on one thread.

A lean module scores a batch a few images at a time (PatchCore: 4, its search's temporaries
grow with the images). One piece after another, each piece's forward pass (ONNX Runtime) and
search (numpy's BLAS) spread themselves over the cores, and OpenBLAS's second thread spins
between products while ONNX Runtime and the overlays want the core. On the 2-core machine of
``benchmarks/README.md`` (``defectscope predict`` of tire's 112 test images, overlays written)
that spinning was a third of the CPU time and bought no wall time: 14 s of user CPU for 9 s of
wall time with BLAS on two threads, 10 s for the same 9 s on one. Pieces scored side by side,
each search on one BLAS thread, keep the cores busy on work instead (see "Scoring pieces side
by side" there). Every piece computes what it computed alone, so scores and maps are the same
bits however many threads run them.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from defectscope.engine.runtimes.onnx_session import thread_limit

T = TypeVar("T")
R = TypeVar("R")

#: scoring threads at most, however many cores: a batch has few pieces (32 images in 4s: 8)
MAX_THREADS = 8

_state = threading.local()
_lock = threading.Lock()
_pool: tuple[int, int, ThreadPoolExecutor] | None = None  # (pid, threads, pool)
_blas_users = 0
_blas_limiter: Any = None


def scoring_threads() -> int:
    """Pieces scored at once: ``$OMP_NUM_THREADS`` where set (Ray sets it to a task's or an
    actor's CPUs), else the CPUs this process may run on, at most :data:`MAX_THREADS`."""
    limit = thread_limit()
    if limit:
        return min(limit, MAX_THREADS)
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_THREADS))


def _mark_worker() -> None:
    _state.inside = True


def _shared_pool(threads: int) -> ThreadPoolExecutor:
    """The process's scoring threads (made again in a forked child, whose copy has none)."""
    global _pool
    with _lock:
        if _pool is None or _pool[0] != os.getpid() or _pool[1] != threads:
            if _pool is not None and _pool[0] == os.getpid():
                _pool[2].shutdown(wait=False)
            pool = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="scoring", initializer=_mark_worker
            )
            _pool = (os.getpid(), threads, pool)
        return _pool[2]


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """numpy's BLAS on one thread while the block runs (a process setting, as BLAS has no
    other: calls that overlap share one limit, and the last to leave restores what was set).
    Nothing changes where threadpoolctl finds no BLAS it can set."""
    global _blas_users, _blas_limiter
    with _lock:
        if _blas_users == 0:
            _blas_limiter = _controller().limit(limits=1, user_api="blas")
        _blas_users += 1
    try:
        yield
    finally:
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_limiter.restore_original_limits()
                _blas_limiter = None


@functools.cache
def _controller():
    """threadpoolctl's view of the loaded BLAS libraries, found once (1.4 ms)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def map_pieces(function: Callable[[T], R], pieces: Sequence[T]) -> list[R]:
    """``[function(piece) for piece in pieces]``, the pieces run side by side on the scoring
    threads (:func:`scoring_threads`) with BLAS on one thread each; one after another where
    there is one thread or one piece, or when called from a scoring thread (a piece that
    splits its own work does it there). The first exception raised is raised here."""
    threads = scoring_threads()
    if threads <= 1 or len(pieces) <= 1 or getattr(_state, "inside", False):
        return [function(piece) for piece in pieces]
    pool = _shared_pool(threads)
    with single_threaded_blas():
        return list(pool.map(function, pieces))
