import numpy as np
import pytest
import torch
from scipy import ndimage

from defectscope.ops import (
    GaussianAccumulator,
    gaussian_blur,
    mahalanobis,
    moments,
    precision_cholesky,
    resize_blur,
    resize_blur_matrix,
)
from defectscope.ops.gaussian import pack_lower, unpack_lower
from defectscope.ops.moments import lower_inverse, precision_cholesky_of


def test_streaming_statistics_equal_two_pass():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(61, 9, 6)).astype(np.float32) * 3 + 50  # an offset mean stresses merge
    acc = GaussianAccumulator(9, 6, chunk_bytes=300)  # tiny chunks exercise the chunked path
    for start in range(0, 61, 7):
        acc.update(x[start : start + 7])
    ref_cov = np.stack([np.cov(x[:, p].T.astype(np.float64)) for p in range(9)])
    np.testing.assert_allclose(acc.mean, x.astype(np.float64).mean(0), atol=1e-5, rtol=0)
    np.testing.assert_allclose(acc.covariance(0.0), ref_cov, atol=1e-4, rtol=1e-5)


def test_merged_shards_equal_one_accumulator():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5, 4)).astype(np.float32) + 7
    whole, first = GaussianAccumulator(5, 4), GaussianAccumulator(5, 4)
    whole.update(x)
    first.update(x[:15])
    second = GaussianAccumulator(5, 4)
    second.update(x[15:])
    first.merge(GaussianAccumulator.from_state(second.state()))  # as shards send it
    np.testing.assert_allclose(first.mean, whole.mean, atol=1e-5)  # float32 batch means
    np.testing.assert_allclose(first.scatter, whole.scatter, atol=1e-6 * whole.scatter.max())


def test_chunked_precision_equals_whole():
    x = np.random.default_rng(1).normal(size=(40, 5, 4)).astype(np.float32)
    acc = GaussianAccumulator(5, 4)
    acc.update(x)
    whole = precision_cholesky(acc.covariance(0.01)).astype(np.float32)
    np.testing.assert_allclose(precision_cholesky_of(acc, 0.01, chunk=2), whole, rtol=1e-6)


def test_triangular_inverse_by_blocks():
    rng = np.random.default_rng(4)
    lower = np.tril(rng.normal(size=(3, 37, 37))) + 8 * np.eye(37)  # 37: uneven blocks
    got = lower_inverse(lower)
    np.testing.assert_allclose(got, np.linalg.inv(lower), atol=1e-12)
    assert (np.triu(got, 1) == 0).all()


def test_mahalanobis_matches_inverse_covariance():
    x = np.random.default_rng(2).normal(size=(30, 4, 5)).astype(np.float32)
    acc = GaussianAccumulator(4, 5)
    acc.update(x)
    cov = acc.covariance(0.01)
    factor = precision_cholesky(cov)
    centred = x[:3].astype(np.float64) - acc.mean
    ref = np.sqrt(np.einsum("bpd,pde,bpe->bp", centred, np.linalg.inv(cov), centred))
    # the PyTorch distance (in exported modules) and the numpy one (the torch-free path)
    torch_dist = mahalanobis(
        torch.from_numpy(x[:3]).double(), torch.from_numpy(acc.mean), torch.from_numpy(factor)
    )
    np.testing.assert_allclose(torch_dist.numpy(), ref, rtol=1e-7)
    got = moments.mahalanobis(x[:3], acc.mean.astype(np.float32), factor.astype(np.float32))
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_not_positive_definite_is_explained():
    with pytest.raises(ValueError, match="position 1 is not positive definite; increase"):
        precision_cholesky(np.stack([np.eye(3), -np.eye(3)]))


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
    rows, cols = moments.resize_blur_matrix(16, 64, 4.0), moments.resize_blur_matrix(12, 48, 4.0)
    np.testing.assert_allclose(moments.upsample_maps(maps.numpy(), rows, cols), got, atol=1e-4)


def test_greedy_coreset_counts_its_picks_without_changing_them():
    from defectscope.ops.coreset import greedy_coreset

    x = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    seen = []
    counted = greedy_coreset(x, 500, projection_dim=8, on_pick=lambda d, k: seen.append((d, k)))
    plain = greedy_coreset(x, 500, projection_dim=8)
    np.testing.assert_array_equal(counted.indices, plain.indices)
    assert len(seen) == 99 and all(k == 500 for _, k in seen)
    assert [d for d, _ in seen] == sorted({d for d, _ in seen}) and seen[-1][0] == 495


def test_a_stage_line_counts_in_place(capsys):
    from defectscope.progress import Stages

    stages = Stages(enabled=True)
    stages.start("selecting a greedy coreset of 5 of 9 patches")
    bar = stages._bar
    stages.start("selecting a greedy coreset of 5 of 9 patches: 3 of 5 picks")
    assert stages._bar is bar and "3 of 5 picks" in bar.desc  # the same line, counting
    stages.start("saving")
    assert stages._bar is not bar  # another step: a new line
    stages.finish()


def test_chunked_work_gives_the_same_result_on_any_number_of_threads(monkeypatch):
    from defectscope.ops import moments
    from defectscope.ops.moments import GaussianAccumulator, precision_cholesky_of

    rng = np.random.default_rng(0)
    acc = GaussianAccumulator(37, 6)
    acc.update(rng.normal(size=(20, 37, 6)).astype(np.float32))
    results = []
    for cpus in (1, 2, 7):
        monkeypatch.setattr(moments.os, "cpu_count", lambda cpus=cpus: cpus)
        results.append(precision_cholesky_of(acc, 0.01, chunk=5))
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)

    def work(start, stop):
        if start >= 10:
            raise ValueError(f"run at {start}")

    monkeypatch.setattr(moments.os, "cpu_count", lambda: 4)
    with pytest.raises(ValueError, match="run at 10"):  # the first failing run, in order
        moments.in_chunks(40, 5, work)
