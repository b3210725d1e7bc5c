import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score, roc_curve

from defectscope import metrics


@pytest.fixture(params=[0, 1, 2])
def data(request):
    rng = np.random.default_rng(request.param)
    labels = rng.random(500) < 0.3
    # rounded scores create many ties, the case where naive implementations go wrong
    scores = np.round(rng.normal(size=500) + labels * 1.2, 1)
    return labels, scores


def test_auroc_matches_sklearn(data):
    labels, scores = data
    assert metrics.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_roc_curve_matches_sklearn(data):
    labels, scores = data
    fpr, tpr, _ = metrics.roc_curve(labels, scores)
    ref_fpr, ref_tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)


def test_best_f1_matches_sklearn(data):
    labels, scores = data
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best, threshold = metrics.best_f1(labels, scores)
    assert best == pytest.approx(f1.max(), abs=1e-9)
    summary = metrics.roc_summary(labels, scores)  # the same, from the ROC's single sort
    assert (summary.best_f1, summary.best_threshold) == pytest.approx((best, threshold))
    assert f1_score(labels, scores >= threshold) == pytest.approx(best)


def test_f1_at_matches_sklearn(data):
    labels, scores = data
    for threshold in (-0.5, 0.3, 1.0):
        assert metrics.f1_at(labels, scores, threshold) == pytest.approx(
            f1_score(labels, scores > threshold)
        )


def test_aupro_perfect_and_random():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 32, 32), bool)
    masks[0, 2:6, 2:6] = True
    masks[0, 20:30, 20:22] = True  # a second region in the same image
    masks[1, 10:20, 10:20] = True
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    # Random maps: PRO equals FPR on average, so the normalised area up to 0.3 is about 0.15.
    random_maps = rng.random(masks.shape)
    assert metrics.aupro(masks, random_maps) == pytest.approx(0.15, abs=0.05)


def test_pro_weighs_regions_equally():
    masks = np.zeros((1, 20, 20), bool)
    masks[0, 0:2, 0:2] = True  # small region, 4 pixels
    masks[0, 10:20, 10:20] = True  # large region, 100 pixels
    maps = np.zeros((1, 20, 20))
    maps[0, 0:2, 0:2] = 1.0  # only the small region is found
    fpr, pro = metrics.pro_curve(masks, maps)
    # At the threshold that finds the small region and no good pixel, PRO is 1/2 (not 4/104).
    assert pro[1] == pytest.approx(0.5)
    assert fpr[1] == 0.0


def test_thin_curve_keeps_ends_and_order():
    x = np.linspace(0, 1, 10_001)
    tx, ty = metrics.thin_curve(x, x**2, points=100)
    assert tx.size <= 100 and tx[0] == 0 and tx[-1] == 1
    assert np.all(np.diff(tx) > 0) and np.allclose(ty, tx**2)


def test_metric_errors():
    with pytest.raises(ValueError, match="both good and anomalous"):
        metrics.auroc([True, True], [0.1, 0.2])
    with pytest.raises(ValueError, match="differ in size"):
        metrics.auroc([True, False], [0.1])
    with pytest.raises(ValueError, match="at least one defect region"):
        metrics.aupro(np.zeros((1, 4, 4), bool), np.zeros((1, 4, 4)))


def _pixel_data(seed=0):
    rng = np.random.default_rng(seed)
    maps = rng.normal(size=(12, 48, 48)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[::2, 5:20, 10:30] = True
    masks[1::3, 30:40, 2:9] = True
    maps[masks] += 1.2
    maps[3, :4, :4] = 7.0  # ties across images
    maps[7, :4, :4] = 7.0
    return maps, masks


@pytest.mark.parametrize("batch", [1, 5, 12])
def test_streaming_pixel_metrics_exact_mode_equals_the_exact_computation(batch):
    from sklearn.metrics import roc_auc_score

    from defectscope.metrics import PixelAccumulator, aupro, f1_at, roc_summary

    maps, masks = _pixel_data()
    acc = PixelAccumulator(threshold=1.0, drop_bits=0)
    for i in range(0, len(maps), batch):
        acc.update(maps[i : i + batch], masks[i : i + batch])
    got = acc.result()
    assert got.auroc == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert got.auroc_bound == 0.0
    assert got.best_f1 == pytest.approx(roc_summary(masks, maps).best_f1, abs=1e-12)
    assert got.f1_fixed == pytest.approx(f1_at(masks, maps, 1.0), abs=1e-12)
    assert got.aupro == pytest.approx(aupro(masks, maps), abs=1e-12)


def test_streaming_pixel_metrics_binned_error_is_within_its_bound():
    from sklearn.metrics import roc_auc_score

    from defectscope.metrics import PixelAccumulator, aupro

    maps, masks = _pixel_data(1)
    acc = PixelAccumulator(threshold=0.5)  # default binning
    for i in range(0, len(maps), 4):
        acc.update(maps[i : i + 4], masks[i : i + 4])
    got = acc.result()
    exact = roc_auc_score(masks.ravel(), maps.ravel())
    assert abs(got.auroc - exact) <= got.auroc_bound + 1e-12
    assert got.auroc_bound <= 1e-4  # the documented bound for the default resolution
    assert got.aupro == pytest.approx(aupro(masks, maps), abs=1e-3)


def test_float_keys_preserve_order_across_signs():
    from defectscope.metrics import float_keys

    values = np.array([-3.5, -1.0, -1e-30, 0.0, 1e-30, 0.5, 2.0, 1e30], dtype=np.float32)
    keys = float_keys(values, 0)
    assert np.all(np.diff(keys) > 0)
    assert np.all(np.diff(float_keys(values, 8)) >= 0)


@pytest.mark.parametrize("spread", [50, 10**12])  # counted by position, then sorted
def test_sparse_histogram_counts_and_weights_per_key(spread):
    rng = np.random.default_rng(spread % 97)
    histogram = metrics.SparseHistogram()
    expected: dict[int, float] = {}
    for _ in range(3):
        keys = rng.integers(-spread, spread, size=(40, 7)).astype(np.int64)
        keys[0, :3] = keys[1, 0]  # repeats within a batch
        weights = rng.uniform(0.1, 2.0, size=keys.shape)
        histogram.add(keys, weights)
        for key, weight in zip(keys.ravel(), weights.ravel()):
            expected[int(key)] = expected.get(int(key), 0.0) + weight
    assert histogram.keys.tolist() == sorted(expected)
    np.testing.assert_allclose(histogram.counts, [expected[k] for k in sorted(expected)])
    counted = metrics.SparseHistogram()
    counted.add(np.array([5, 3, 5, 5], dtype=np.int64))
    counted.add(np.array([3, 9], dtype=np.int64))
    assert counted.keys.tolist() == [3, 5, 9] and counted.counts.tolist() == [2.0, 3.0, 1.0]
