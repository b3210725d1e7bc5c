"""Running independent pieces of work through an executor: the training images of one category
split into shards, or many categories fitted at once.

An **executor** is any object with ``map(fn, items)`` that calls the module-level function
``fn`` on every item, wherever it likes (this process, other processes, a Ray cluster), and
yields the results **in the order of** ``items``. :class:`SerialExecutor` runs them here, one
after the other; ``defectscope.cluster.RayExecutor`` runs them as Ray tasks. The functions
and their arguments are plain data (paths, option dicts), so every executor gets the same
results.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterator[R]: ...


class SerialExecutor:
    """Runs every item here, in order."""

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> Iterator[R]:
        return map(fn, items)


def split_evenly(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """``items`` in ``parts`` contiguous slices whose lengths differ by at most one (fewer
    slices when there are fewer items; none empty)."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


@dataclass(frozen=True)
class ShardJob:
    """One shard of a fit: the detector, its options, its images and the state every shard
    shares (the illumination target, taken from the first training batch)."""

    detector: str
    params: dict[str, Any]
    paths: list[str]
    shared: dict[str, float]


@dataclass(frozen=True)
class ShardResult:
    """What a shard learned (:meth:`~defectscope.models.base.Fitter.partial`) and the
    per-image intensity statistics of its images (for the lighting-shift check)."""

    partial: dict[str, Any]
    intensity: list[tuple[np.ndarray, np.ndarray]]
