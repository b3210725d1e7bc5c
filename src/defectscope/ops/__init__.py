"""Pure tensor functions: Gaussian statistics, Mahalanobis distance, smoothing."""

from defectscope.ops.blur import gaussian_blur
from defectscope.ops.gaussian import GaussianAccumulator, mahalanobis, precision_cholesky

__all__ = ["GaussianAccumulator", "gaussian_blur", "mahalanobis", "precision_cholesky"]
