"""Seeded splits of labelled samples (numpy only)."""

from __future__ import annotations

import numpy as np


def stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """``k`` disjoint index sets covering every sample, each with the class ratio of the whole."""
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    for value in (False, True):
        idx = rng.permutation(np.flatnonzero(labels == value))
        for i, j in enumerate(idx):
            folds[i % k].append(int(j))
    return [np.sort(np.array(f, dtype=int)) for f in folds]
