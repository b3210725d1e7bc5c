"""Micro-batching: concurrent requests share one model call.

Requests put their decoded images on a bounded queue; one worker thread takes up to
``max_batch`` images, waiting at most ``max_wait`` seconds for more after the first, scores them
in one call and hands each request its rows. A full queue is refused at once (the caller answers
503 with ``Retry-After``), so memory and latency stay bounded under any load.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np


class QueueFull(Exception):
    """The batcher's queue has no room: try again later."""


@dataclass
class _Job:
    images: list[np.ndarray]
    future: Future


class MicroBatcher:
    """Score images of many requests in shared batches on one worker thread.

    Args:
        scorer: a fitted detector or exported model (its ``score`` takes a list of arrays).
        max_batch: most images per model call.
        max_wait: seconds to wait for more images after the first of a batch.
        max_queue: most images waiting; beyond it :meth:`submit` raises :class:`QueueFull`.
    """

    def __init__(self, scorer, *, max_batch: int = 8, max_wait: float = 0.01, max_queue: int = 64):
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="defectscope-batcher", daemon=True)
        self.batches = 0
        self.images = 0
        self._thread.start()

    def submit(self, images: list[np.ndarray]) -> Future:
        """Queue one request's images; the future gives ``(scores, maps, scorer)`` in input
        order, ``scorer`` being the model that scored them (the service judges with its
        threshold, so a request never mixes two models across a hot swap)."""
        with self._lock:
            if self._waiting + len(images) > self.max_queue:
                raise QueueFull(f"{self._waiting} images are waiting (limit {self.max_queue})")
            self._waiting += len(images)
        job = _Job(images, Future())
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _work(self) -> None:
        pending: _Job | None = None
        while True:
            job = pending or self._queue.get()
            pending = None
            if job is None:
                return
            jobs, count = [job], len(job.images)
            deadline = time.monotonic() + self.max_wait
            while count < self.max_batch:
                left = deadline - time.monotonic()
                try:
                    more = (
                        self._queue.get(timeout=max(left, 0))
                        if left > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                if count + len(more.images) > self.max_batch:
                    pending = more  # starts the next batch
                    break
                jobs.append(more)
                count += len(more.images)
            self._run(jobs, count)

    def _run(self, jobs: list[_Job], count: int) -> None:
        images = [image for job in jobs for image in job.images]
        scorer = self.scorer  # a model swapped in now serves the next batch, not this one
        try:
            scored = scorer.score(images)
            error = None
        except Exception as exc:  # noqa: BLE001 - handed to the requests, not lost
            error = exc
        with self._lock:
            self._waiting -= count
        self.batches += 1
        self.images += count
        start = 0
        for job in jobs:
            n = len(job.images)
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(
                    (scored.scores[start : start + n], scored.maps[start : start + n], scorer)
                )
            start += n
