"""PatchCore: coreset exactness and cover, bounded nearest-neighbour search, detection floor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import defectscope
from defectscope.data import load_category
from defectscope.engine.workflows.evaluation import evaluate
from defectscope.ops import greedy_coreset, greedy_coreset_reference, k_nearest, nearest
from defectscope.ops.coreset import covering_radius

from .conftest import SIZE


def clustered(n: int, dim: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(20, dim, generator=gen) * 4
    return centres[torch.randint(20, (n,), generator=gen)] + torch.randn(n, dim, generator=gen)


@pytest.mark.parametrize("projection_dim", [8, 0])
def test_fast_coreset_equals_the_textbook_loop(projection_dim):
    x = clustered(3000, 24, seed=1)
    fast = greedy_coreset(x, 60, projection_dim=projection_dim, seed=2)
    slow = greedy_coreset_reference(x, 60, projection_dim=projection_dim, seed=2)
    assert fast.indices.tolist() == slow.indices.tolist()
    assert fast.radius == pytest.approx(slow.radius, rel=1e-4)


def test_coreset_is_a_k_center_cover():
    x = clustered(2000, 16, seed=3)
    core = greedy_coreset(x, 50, projection_dim=0, seed=0)
    assert len(set(core.indices.tolist())) == 50  # no point picked twice
    # every point lies within the reported radius of a selected point ...
    assert covering_radius(x, core) == pytest.approx(core.radius, rel=1e-4)
    # ... and greedy k-center is a 2-approximation: the chosen points are pairwise at least
    # the radius apart (else the last pick would not have been the farthest point).
    chosen = x[core.indices]
    pairwise = torch.cdist(chosen, chosen) + torch.eye(50) * 1e9
    assert float(pairwise.min()) >= core.radius * (1 - 1e-4)


def test_nearest_neighbour_search_is_chunked_and_exact():
    gen = torch.Generator().manual_seed(0)
    queries, bank = torch.randn(50, 12, generator=gen), torch.randn(300, 12, generator=gen)
    want = torch.cdist(queries, bank).min(dim=1)
    # a bank of 300 rows in chunks of 16: the largest temporary is 50 x 16, never 50 x 300
    got_dist, got_index = nearest(queries, bank, chunk=16)
    torch.testing.assert_close(got_dist, want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_index, want.indices)


def test_numpy_search_equals_the_pytorch_search():
    """The lean path's search (numpy) finds what the exportable module's (PyTorch) finds."""
    from defectscope.ops import search

    gen = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(60, 12, generator=gen), torch.randn(333, 12, generator=gen)
    want, _ = nearest(queries, bank, chunk=64)
    got = search.nearest_distance(queries.numpy(), bank.numpy(), chunk=64)  # 333 = 5 x 64 + 13
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk, block", [(16, 7), (64, 128), (1000, 1), (5, 60)])
def test_numpy_search_in_blocks_of_queries_is_exact(chunk, block):
    """The lean search in blocks of queries against chunks of the bank: every block size and
    chunk size (none dividing the 60 queries or the 333 rows) finds each query's nearest
    distance and mean of 3 nearest, as a float64 brute force does."""
    from defectscope.ops import search

    rng = np.random.default_rng(3)
    queries = rng.standard_normal((60, 12)).astype(np.float32)
    bank = rng.standard_normal((333, 12)).astype(np.float32)
    exact = np.sqrt(((queries[:, None, :].astype(np.float64) - bank[None]) ** 2).sum(-1))
    got = search.nearest_distance(queries, bank, chunk=chunk, block=block)
    np.testing.assert_allclose(got, exact.min(axis=1), rtol=1e-5, atol=1e-5)
    got3 = search.mean_nearest_distance(queries, bank, 3, chunk=chunk, block=block)
    np.testing.assert_allclose(got3, np.sort(exact, axis=1)[:, :3].mean(1), rtol=1e-5, atol=1e-5)
    assert got.dtype == got3.dtype == np.float32
    with pytest.raises(ValueError, match="bank is empty"):
        search.nearest_distance(queries, bank[:0])


def test_k_nearest_search_is_chunked_and_exact():
    gen = torch.Generator().manual_seed(1)
    queries, bank = torch.randn(40, 10, generator=gen), torch.randn(250, 10, generator=gen)
    want = torch.cdist(queries, bank).topk(5, dim=1, largest=False)
    # chunks of 16 rows (and a last one of 10): the running 5 best merge with each chunk's
    got_dist, got_index = k_nearest(queries, bank, 5, chunk=16)
    torch.testing.assert_close(got_dist, want.values, rtol=1e-4, atol=1e-4)
    assert torch.equal(got_index, want.indices)
    one_dist, one_index = nearest(queries, bank, chunk=16)
    torch.testing.assert_close(got_dist[:, 0], one_dist)
    with pytest.raises(ValueError, match="k must be between 1 and the bank size 250"):
        k_nearest(queries, bank, 251)


@pytest.fixture(scope="module")
def patchcore(texture):
    model = defectscope.PatchCore(
        image_size=2 * SIZE, coreset_ratio=0.1, batch_size=8, num_workers=1, runtime="torch"
    )
    return model.fit(texture)


def test_patchcore_detects_synthetic_defects(patchcore, texture):
    result = evaluate(patchcore, texture)
    assert result.metrics["image_auroc"] >= 0.9
    assert result.metrics["pixel_auroc"] >= 0.9
    info = patchcore.fit_info_
    assert info["bank_size"] == round(0.1 * info["n_patches"])
    assert info["coreset_radius"] > 0


def test_training_images_score_low(patchcore, texture):
    train = list(load_category(texture).train_paths)
    scores = patchcore.score(train).scores
    assert np.mean(scores <= patchcore.threshold_) >= 0.9


def test_k_nearest_scores_are_mean_distances(texture, tmp_path):
    """k_nearest=3: patch scores are the mean of three distances, so never below k=1's; the
    model still detects, and its export agrees with it."""
    from defectscope.engine.runtimes.exported import ExportedModel, export_onnx

    common = {"image_size": 2 * SIZE, "coreset_ratio": 0.1, "num_workers": 1}
    one = defectscope.PatchCore(**common).fit(texture)
    three = defectscope.PatchCore(**common, k_nearest=3).fit(texture)
    images = [s.path for s in load_category(texture).test_samples]
    a, b = one.score(images), three.score(images)
    assert (b.maps >= a.maps - 1e-4).all() and (b.scores > a.scores).any()
    assert evaluate(three, texture).metrics["image_auroc"] >= 0.9
    exported = ExportedModel(export_onnx(three, tmp_path / "k3.onnx"))
    np.testing.assert_allclose(exported.score(images).scores, b.scores, rtol=1e-3)


def test_reweighting_keeps_scores_finite_and_not_larger(texture):
    common = {"image_size": SIZE, "coreset_ratio": 0.1, "num_workers": 1, "runtime": "torch"}
    plain = defectscope.PatchCore(**common).fit(texture)
    weighted = defectscope.PatchCore(**common, reweight=True).fit(texture)
    images = [s.path for s in load_category(texture).test_samples]
    a, b = plain.score(images).scores, weighted.score(images).scores
    assert np.isfinite(b).all() and (b <= a + 1e-5).all() and (b < a).any()


@pytest.fixture(scope="module")
def wide_texture(texture, tmp_path_factory):
    """The texture category squeezed to 4:3 (images and masks): a non-square camera."""
    from PIL import Image

    root = tmp_path_factory.mktemp("wide") / "texture"
    for src in texture.rglob("*.png"):
        dst = root / src.relative_to(texture)
        dst.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(src)
        width, height = image.size
        resample = Image.Resampling.NEAREST if "ground_truth" in dst.parts else Image.BILINEAR
        image.resize((width, height * 3 // 4), resample).save(dst)
    return root


@pytest.mark.parametrize("model", ["patchcore", "padim"])
def test_non_square_inputs_keep_the_aspect_ratio(model, wide_texture, tmp_path):
    """A 4:3 model (96 high, 128 wide) fits, scores with 96 x 128 maps, finds the defects, and
    survives save/load and export with the same scores (ONNX Runtime features)."""
    from defectscope.engine.fitting.estimator import make_detector
    from defectscope.engine.runtimes.exported import ExportedModel, export_onnx

    params = {"image_size": 2 * SIZE, "image_height": 3 * SIZE // 2, "num_workers": 1}
    params.update({"coreset_ratio": 0.1} if model == "patchcore" else {"n_features": 40})
    detector = make_detector(model, params).fit(wide_texture)
    assert detector.input_shape == (96, 128)
    result = evaluate(detector, wide_texture)
    assert result.metrics["image_auroc"] >= 0.95
    assert result.metrics["pixel_auroc"] >= 0.9
    images = [s.path for s in load_category(wide_texture).test_samples]
    scored = detector.score(images)
    assert scored.maps.shape == (len(images), 96, 128)

    reloaded = defectscope.load(detector.save(tmp_path / "model.safetensors"))
    assert reloaded.input_shape == (96, 128)
    np.testing.assert_allclose(reloaded.score(images).scores, scored.scores, rtol=1e-5)
    exported = ExportedModel(export_onnx(detector, tmp_path / "model.onnx"))
    assert exported.input_shape == (96, 128)
    got = exported.score(images)
    assert got.maps.shape == scored.maps.shape
    np.testing.assert_allclose(got.scores, scored.scores, rtol=1e-3)


def test_memory_budget_reduces_patches_as_they_arrive(mvtec_root, tmp_path):
    """Over the budget, each fold's patches are reduced in chunks as they arrive: the bank has
    the same size, the detector still works, and a budget below one batch is one clear error."""
    from defectscope import PatchCore
    from defectscope.data.synthetic import make_category
    from defectscope.engine.workflows.evaluation import evaluate
    from defectscope.errors import ConfigError

    category = make_category(tmp_path / "big", kind="texture", n_train=40, size=128, seed=3)
    params = {"image_size": 128, "batch_size": 2, "num_workers": 1, "coreset_ratio": 0.05}
    free = PatchCore(**params).fit(category)
    tight = PatchCore(**params, memory_budget=0.001).fit(category)
    assert free.fit_info_["chunks_reduced_early"] == 0
    assert tight.fit_info_["chunks_reduced_early"] > 0
    # within the budget one exact selection over every patch; over it, the folds' coresets
    assert free.fit_info_["bank_selection"] == "exact"
    assert tight.fit_info_["bank_selection"] == "coreset union"
    assert tight.fit_info_["bank_size"] == free.fit_info_["bank_size"]
    assert tight.fit_info_["memory_budget_gb"] == 0.001
    assert evaluate(tight, category).metrics["image_auroc"] >= 0.9
    with pytest.raises(ConfigError, match="below one batch's patches"):
        PatchCore(**{**params, "batch_size": 32}, memory_budget=0.001).fit(category)
    with pytest.raises(ConfigError, match=r"memory_budget must be in \[0.001, "):
        PatchCore(**params, memory_budget=1e6).fit(category)


def test_inverted_index_search_is_exact_over_every_list_and_never_below_exact():
    from defectscope.ops.search import InvertedIndex, nearest_distance

    bank = clustered(3000, 16, seed=5).numpy()
    queries = clustered(700, 16, seed=6).numpy()
    exact = nearest_distance(queries, bank)
    index = InvertedIndex(bank, seed=0)
    assert index.nlist == round(4 * np.sqrt(3000)) and len(index) == 3000
    # every row is in exactly one list
    assert index.bounds[0] == 0 and index.bounds[-1] == 3000
    assert np.array_equal(np.sort(index.rows, axis=0), np.sort(bank, axis=0))
    np.testing.assert_allclose(index.nearest_distance(queries, index.nlist), exact, rtol=1e-4)
    for nprobe in (1, 4, 16):
        approx = index.nearest_distance(queries, nprobe)
        assert np.all(approx >= exact * (1 - 1e-4) - 1e-4), nprobe
    # more lists probed, more nearest rows found; 16 of 219 lists find almost every one here
    recall = [
        np.mean(np.isclose(index.nearest_distance(queries, n), exact, rtol=1e-4))
        for n in (1, 4, 16)
    ]
    assert recall[0] < recall[1] < recall[2] and recall[2] > 0.99
    # the same seed, the same index
    again = InvertedIndex(bank, seed=0)
    assert np.array_equal(again.centroids, index.centroids)
    # more lists asked for than rows: one row per list, still exact
    small = InvertedIndex(bank[:5], nlist=50)
    assert small.nlist == 5
    np.testing.assert_allclose(
        small.nearest_distance(queries, 2), nearest_distance(queries, bank[:5]), rtol=1e-4
    )
    with pytest.raises(ValueError, match="bank must be"):
        InvertedIndex(bank[:0])


def test_patchcore_searches_its_bank_through_an_index_when_asked(texture, tmp_path):
    """search="ivf" scores through the inverted-file index (close to the exact search of the
    same bank), a saved model rebuilds the same index, and "auto" keeps small banks exact."""
    from defectscope import PatchCore

    params = {"image_size": SIZE, "batch_size": 8, "num_workers": 1, "runtime": "onnxruntime"}
    exact = PatchCore(**params, search="exact").fit(texture)
    ivf = PatchCore(**params, search="ivf").fit(texture)
    auto = PatchCore(**params).fit(texture)
    assert exact.module_.index is None and auto.module_.index is None
    assert ivf.module_.index is not None and len(ivf.module_.index) == len(ivf.module_.bank)
    assert np.array_equal(ivf.module_.bank, exact.module_.bank)  # the search is all that differs
    images = sorted((texture / "test").rglob("*.png"))
    a, b = exact.score(images).scores, ivf.score(images).scores
    assert np.all(b >= a * (1 - 1e-4) - 1e-4)  # an index can miss a row, never invent one
    assert np.corrcoef(a, b)[0, 1] > 0.98
    loaded = defectscope.load(ivf.save(tmp_path / "ivf.safetensors"))
    assert loaded.config_.search == "ivf"
    assert np.array_equal(loaded.module_.index.centroids, ivf.module_.index.centroids)
    np.testing.assert_allclose(loaded.score(images).scores, b, rtol=1e-5)
    with pytest.raises(defectscope.errors.ConfigError, match="search must be exact or auto"):
        PatchCore(**params, search="ivf", k_nearest=3).fit(texture)


def test_waiting_patches_are_written_into_one_buffer_and_reduced_from_it():
    """In a fit with folds the patches waiting for their coreset sit in one buffer (no join
    doubling them), sized so that the buffer and the selection's working arrays together fit
    the budget; a chunk over it is reduced exactly as the joined patches would be."""
    from defectscope.models.patchcore.config import PatchcoreConfig
    from defectscope.models.patchcore.lean import (
        SHARD_OVERSAMPLE,
        BankBuilder,
        row_bytes,
        select,
    )

    config = PatchcoreConfig(image_size=64, memory_budget=0.001, coreset_ratio=0.05)
    # 16 floats, and (the projection being no smaller) 16 projected + 3 distances per row
    assert row_bytes(config, 16) == 16 * 4 + 19 * 4
    assert row_bytes(PatchcoreConfig(), 152) == 152 * 4 + 35 * 4  # lite0, 32-d projection
    rng = np.random.default_rng(0)
    batches = [rng.normal(size=(2, 1250, 16)).astype(np.float32) for _ in range(2)]  # 160 kB
    builder = BankBuilder(config, None)
    builder.start_fold(0)
    for batch in batches:
        builder.add(batch)
    joined = np.concatenate([b.reshape(-1, 16) for b in batches])
    capacity = 1_000_000 // row_bytes(config, 16)  # 7,142 rows: two batches of 2,500
    assert builder.n_chunks == 0 and len(builder._buffer) == capacity
    waiting = builder.take_patches()
    assert np.shares_memory(waiting, builder._buffer)
    np.testing.assert_array_equal(waiting, joined)
    # refill past the budget: the third batch finds no room, the first two are reduced
    batches = [rng.normal(size=(2, 1250, 16)).astype(np.float32) for _ in range(3)]
    for batch in batches:
        builder.add(batch)
    assert builder.n_chunks == 1
    expected, _ = select(
        np.concatenate([b.reshape(-1, 16) for b in batches[:2]]),
        config.coreset_ratio * SHARD_OVERSAMPLE,
        config,
    )
    np.testing.assert_array_equal(builder._chunks[0][0], expected)
    assert not np.shares_memory(builder._chunks[0][0], builder._buffer)
    np.testing.assert_array_equal(builder.take_patches(), batches[2].reshape(-1, 16))
    bank = builder.finalize()
    assert builder._buffer is None and bank.shape[1] == 16


def test_bank_is_one_exact_selection_where_the_projections_fit(tmp_path, monkeypatch):
    """Told how many images the folds hold, and their patches' projections within the budget,
    the builder's bank is one exact greedy selection over every patch (bitwise what ``select``
    makes of them all), while the banks without a fold are the folds' coresets as before; the
    patches wait in a temporary file that has no name, so none is ever left behind."""
    import os
    import shutil
    import tempfile
    import types

    from defectscope.models.patchcore.config import PatchcoreConfig
    from defectscope.models.patchcore.lean import BankBuilder, ExactPool, select

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    config = PatchcoreConfig(coreset_ratio=0.02)
    rng = np.random.default_rng(4)
    # 12 images of 300 patches of 48 features (projected to 32), in three folds, batches of
    # three spreads: a union of per-fold coresets would not select what one pass over all does
    images = [rng.normal(size=(2, 300, 48)).astype(np.float32) * (1 + i % 3) for i in range(6)]

    def build(expected):
        builder = BankBuilder(config, None)
        if expected:
            builder.expect_images(expected)
        for fold in range(3):
            builder.start_fold(fold)
            for batch in images[2 * fold : 2 * fold + 2]:
                builder.add(batch + np.float32(0))
            assert os.listdir(tmp_path) == []  # the patches' file has no name
        return builder, [builder.rows_without(f) for f in range(3)], builder.finalize()

    exact, exact_without, bank = build(12)
    union, union_without, union_bank = build(None)
    every = np.concatenate([b.reshape(-1, 48) for b in images])
    expected, radius = select(every, config.coreset_ratio, config)
    np.testing.assert_array_equal(bank, expected)
    assert exact.radius == radius and exact.info()["bank_selection"] == "exact"
    assert union.info()["bank_selection"] == "coreset union"
    assert not np.array_equal(union_bank, bank) and len(union_bank) == len(bank)
    for got, want in zip(exact_without, union_without):
        np.testing.assert_array_equal(got, want)
    assert exact._pool is None  # projections and file dropped once every fold was fed
    # over the budget, or without room for the file: the union, as without the count
    assert ExactPool.fits(config, 714_000, 152, 100_000_000)  # 140 bytes per lite0 patch
    assert not ExactPool.fits(config, 715_000, 152, 100_000_000)
    assert not ExactPool.fits(PatchcoreConfig(coreset_method="approximate"), 10, 152, 10**8)
    full = types.SimpleNamespace(total=10**9, used=10**9, free=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)
    assert not ExactPool.fits(config, 10, 152, 100_000_000)


def test_an_interrupted_exact_selection_leaves_no_file(tmp_path, monkeypatch):
    """A fit that stops while its patches wait in the file (here: the builder dropped in the
    second fold, as an exception unwinding the fit drops it) leaves nothing in the temporary
    directory."""
    import gc
    import os
    import tempfile

    from defectscope.models.patchcore.config import PatchcoreConfig
    from defectscope.models.patchcore.lean import BankBuilder

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    builder = BankBuilder(PatchcoreConfig(), None)
    builder.expect_images(8)
    builder.start_fold(0)
    builder.add(np.ones((4, 100, 40), dtype=np.float32))
    assert builder._pool is not None and builder._pool.n == 400
    builder.start_fold(1)
    del builder  # what an exception unwinding the fit does
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_memory_budget_bounds_the_waiting_patches_and_their_selection():
    """What numpy holds while patches stream through a fold, chunks reduced as they arrive,
    stays within the budget plus the batch being added (traced allocations: the buffer, the
    greedy's projection and distances, the chunks' coresets); unbudgeted, the projection and
    a float32 copy of each projected slice came on top of a full buffer."""
    import tracemalloc

    from defectscope.models.patchcore.config import PatchcoreConfig
    from defectscope.models.patchcore.lean import BankBuilder

    budget = 4_000_000
    config = PatchcoreConfig(memory_budget=budget / 1e9, coreset_ratio=0.01)
    rng = np.random.default_rng(1)
    batch = rng.normal(size=(2, 1600, 152)).astype(np.float32)  # 1.9 MB, as lite0 at 320 px
    builder = BankBuilder(config, None)
    tracemalloc.start()
    try:
        builder.start_fold(0)
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        for i in range(12):
            builder.add(batch + np.float32(i))  # a new array each time, as a forward pass
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert builder.n_chunks >= 3
    chunks = sum(part.nbytes for part, _ in builder._chunks)
    assert peak <= budget + 2 * batch.nbytes + chunks + 64_000, (peak, chunks)


def test_map_large_blocks_returns_freed_batch_sized_blocks_to_the_system():
    """After glibc has raised its mapping threshold (a 30 MB block freed), 2 MB blocks freed
    between small survivors stay on the heap; with the threshold fixed at 1 MB (what the
    command line sets) they are unmapped: the process's resident size comes back."""
    import subprocess
    import sys

    from defectscope.memory import _mallopt

    if _mallopt() is None or not Path("/proc/self/statm").exists():
        pytest.skip("glibc and /proc only")
    script = (
        "import numpy as np\n"
        "from defectscope.memory import map_large_blocks\n"
        "def rss():\n"
        "    return int(open('/proc/self/statm').read().split()[1]) * 4096\n"
        "assert map_large_blocks()\n"
        "big = np.ones(30 << 20, dtype=np.uint8); del big\n"
        "base = rss(); blocks, pins = [], []\n"
        "for i in range(40):\n"
        "    blocks.append(np.ones(2 << 20, dtype=np.uint8))\n"
        "    pins.append(np.ones(1000, dtype=np.uint8))\n"
        "del blocks\n"
        "print(rss() - base)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) < 4_000_000  # of the 84 MB allocated and freed
