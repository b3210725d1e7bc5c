"""Pure tensor functions: Gaussian statistics, Mahalanobis distance, smoothing, greedy
k-center coreset, nearest-neighbour search."""

from defectscope.ops.blur import gaussian_blur, resize_blur, resize_blur_matrix
from defectscope.ops.coreset import Coreset, greedy_coreset, greedy_coreset_reference
from defectscope.ops.gaussian import GaussianAccumulator, mahalanobis, precision_cholesky
from defectscope.ops.knn import k_nearest, nearest

__all__ = [
    "Coreset",
    "greedy_coreset",
    "greedy_coreset_reference",
    "k_nearest",
    "nearest",
    "GaussianAccumulator",
    "gaussian_blur",
    "mahalanobis",
    "precision_cholesky",
    "resize_blur",
    "resize_blur_matrix",
]
