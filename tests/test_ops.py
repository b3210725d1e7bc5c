import numpy as np
import pytest
import torch
from scipy import ndimage

from defectscope.ops import (
    GaussianAccumulator,
    gaussian_blur,
    mahalanobis,
    precision_cholesky,
    resize_blur,
    resize_blur_matrix,
)
from defectscope.ops.gaussian import pack_lower, precision_cholesky_of, unpack_lower


def test_streaming_statistics_equal_two_pass():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(61, 9, 6, generator=gen) * 3 + 50  # an offset mean stresses the merge
    acc = GaussianAccumulator(9, 6, chunk_bytes=300)  # tiny chunks exercise the chunked path
    for batch in x.split(7):
        acc.update(batch)
    ref_cov = torch.stack([torch.cov(x[:, p].T.double()) for p in range(9)])
    torch.testing.assert_close(acc.mean, x.double().mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(acc.covariance(0.0), ref_cov, atol=1e-4, rtol=1e-5)


def test_chunked_precision_equals_whole():
    x = torch.randn(40, 5, 4, generator=torch.Generator().manual_seed(1))
    acc = GaussianAccumulator(5, 4)
    acc.update(x)
    whole = precision_cholesky(acc.covariance(0.01)).float()
    torch.testing.assert_close(precision_cholesky_of(acc, 0.01, chunk=2), whole)


def test_mahalanobis_matches_inverse_covariance():
    x = torch.randn(30, 4, 5, generator=torch.Generator().manual_seed(2))
    acc = GaussianAccumulator(4, 5)
    acc.update(x)
    cov = acc.covariance(0.01)
    dist = mahalanobis(x[:3], acc.mean, precision_cholesky(cov))
    centred = x[:3].double() - acc.mean
    ref = torch.einsum("bpd,pde,bpe->bp", centred, torch.linalg.inv(cov), centred).sqrt()
    torch.testing.assert_close(dist, ref)


def test_not_positive_definite_is_explained():
    with pytest.raises(ValueError, match="increase the regularization"):
        precision_cholesky(-torch.eye(3).expand(2, 3, 3))


def test_pack_round_trip():
    m = torch.tril(torch.randn(3, 6, 6))
    assert pack_lower(m).shape == (3, 21)
    torch.testing.assert_close(unpack_lower(pack_lower(m), 6), m)


def test_blur_matches_scipy():
    maps = torch.rand(2, 40, 37)
    ref = ndimage.gaussian_filter(maps.numpy(), sigma=(0, 4, 4), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(maps, 4.0).numpy(), ref, atol=1e-5)


def test_resize_blur_equals_upsample_then_blur():
    maps = torch.rand(3, 16, 12) * 50
    upsampled = torch.nn.functional.interpolate(
        maps.unsqueeze(1), size=(64, 48), mode="bilinear", align_corners=False
    ).squeeze(1)
    expected = gaussian_blur(upsampled, 4.0)
    got = resize_blur(maps, resize_blur_matrix(16, 64, 4.0), resize_blur_matrix(12, 48, 4.0))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)
