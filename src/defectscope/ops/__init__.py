"""Pure array functions: Gaussian statistics, Mahalanobis distance, smoothing, greedy
k-center coreset, nearest-neighbour search.

Names are imported on first use, so that the numpy-only modules (:mod:`~.moments`,
:mod:`~.coreset`, :mod:`~.search`) can be used without importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "gaussian_blur": "blur",
    "resize_blur": "blur",
    "resize_blur_matrix": "blur",
    "Coreset": "coreset",
    "greedy_coreset": "coreset",
    "greedy_coreset_reference": "coreset",
    "GaussianAccumulator": "moments",
    "precision_cholesky": "moments",
    "mahalanobis": "gaussian",
    "k_nearest": "knn",
    "nearest": "knn",
}

__all__ = list(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"defectscope.ops.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'defectscope.ops' has no attribute {name!r}")
