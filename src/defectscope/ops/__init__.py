"""Pure tensor functions: Gaussian statistics, Mahalanobis distance, smoothing."""

from defectscope.ops.blur import gaussian_blur, resize_blur, resize_blur_matrix
from defectscope.ops.gaussian import GaussianAccumulator, mahalanobis, precision_cholesky

__all__ = [
    "GaussianAccumulator",
    "gaussian_blur",
    "mahalanobis",
    "precision_cholesky",
    "resize_blur",
    "resize_blur_matrix",
]
