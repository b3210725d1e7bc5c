"""The lean path: once the feature graph is cached, PaDiM and PatchCore fit, evaluate, save,
load and predict without importing PyTorch, with the same results and files as the PyTorch
path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import defectscope
from defectscope.data import load_category
from defectscope.engine.workflows.evaluation import evaluate

from .conftest import SIZE


def small(**kwargs):
    # seed 11: a graph no other test caches, so the first lean fit here exports it first
    return defectscope.PaDiM(
        image_size=SIZE, n_features=40, num_workers=1, batch_size=8, seed=11, **kwargs
    )


@pytest.fixture(scope="module")
def pair(texture):
    """The same PaDiM fitted in PyTorch (the reference) and on the lean path."""
    return small(runtime="torch").fit(texture), small().fit(texture)


def test_lean_fits_equal_the_pytorch_fit(pair, texture):
    reference, lean = pair
    assert not getattr(reference.module_, "lean", False)
    assert lean.module_.lean  # also the first fit, which exported the graph
    assert lean.threshold_ == pytest.approx(reference.threshold_, rel=1e-4)
    for key in ("n_train", "feature_size", "weights_source", "weights_sha256"):
        assert lean.fit_info_[key] == reference.fit_info_[key], key
    source, lean_source = (
        reference.fit_info_["threshold_source"],
        lean.fit_info_["threshold_source"],
    )
    assert (
        lean_source["n_out_of_fold"]
        == source["n_out_of_fold"]
        == len(reference.out_of_fold_scores_)
    )
    np.testing.assert_allclose(lean.out_of_fold_scores_, reference.out_of_fold_scores_, rtol=1e-4)
    a = {k: v.numpy() for k, v in reference.module_.fitted_state().items()}
    b = lean.module_.fitted_state()
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(a["feature_index"], b["feature_index"])
    np.testing.assert_allclose(b["mean"], a["mean"], atol=1e-4)
    scale = np.abs(a["precision_chol_lower"]).max()
    np.testing.assert_allclose(
        b["precision_chol_lower"], a["precision_chol_lower"], atol=1e-3 * scale
    )
    images = [s.path for s in load_category(texture).test_samples]
    x, y = reference.score(images), lean.score(images)
    np.testing.assert_allclose(y.scores, x.scores, rtol=1e-4)
    np.testing.assert_allclose(y.maps, x.maps, rtol=1e-3, atol=1e-3 * x.maps.max())
    assert evaluate(lean, texture).metrics == pytest.approx(
        evaluate(reference, texture).metrics, abs=1e-3
    )
    again = small().fit(texture)  # the same config again: the same numbers, bit for bit
    assert again.threshold_ == lean.threshold_
    assert (again.score(images).scores == y.scores).all()


def test_files_cross_between_the_paths(pair, texture, tmp_path):
    """A lean model's file loads into PyTorch, a PyTorch model's file loads lean; export works
    from a lean model."""
    from defectscope.engine.runtimes.exported import ExportedModel, export_onnx

    first, second = pair  # PyTorch, lean
    images = [s.path for s in load_category(texture).test_samples][:6]
    lean_file = second.save(tmp_path / "lean.safetensors")
    torch_file = first.save(tmp_path / "torch.safetensors")
    as_torch = defectscope.load(lean_file, runtime="torch")
    as_lean = defectscope.load(torch_file, runtime="onnxruntime")  # it was fitted with torch
    assert not getattr(as_torch.module_, "lean", False) and as_lean.module_.lean
    np.testing.assert_allclose(
        as_torch.score(images).scores, second.score(images).scores, rtol=1e-4
    )
    np.testing.assert_allclose(as_lean.score(images).scores, first.score(images).scores, rtol=1e-4)
    exported = ExportedModel(export_onnx(as_lean, tmp_path / "lean.onnx"))
    np.testing.assert_allclose(exported.score(images).scores, first.score(images).scores, rtol=1e-3)


@pytest.mark.parametrize("mode", ["none", "gain", "standardize"])
def test_numpy_illumination_equals_the_module(mode):
    """The lean path's corrections (numpy) equal the exportable module's (PyTorch)."""
    import torch

    from defectscope.models.features import Illumination
    from defectscope.models.lean import illuminate, to_float

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, size=(3, 40, 56, 3), dtype=np.uint8)
    images[0] //= 8  # a dark image: the gain then clips
    module = Illumination(mode, torch.tensor([0.45]))
    want = module(torch.from_numpy(to_float(images))).numpy()
    np.testing.assert_allclose(illuminate(to_float(images), mode, 0.45), want, atol=1e-6)


def test_local_illumination_takes_the_pytorch_path(texture):
    assert not getattr(small(illumination="local").fit(texture).module_, "lean", False)


def patchcore(**kwargs):
    return defectscope.PatchCore(
        image_size=2 * SIZE, coreset_ratio=0.1, num_workers=1, batch_size=8, seed=11, **kwargs
    )


def test_lean_patchcore_equals_the_pytorch_fit(texture, tmp_path):
    """The same bank size, radius and detection; the PyTorch fit feeds eager-PyTorch features,
    so the greedy picks may differ where two patches are equally far: scores agree closely,
    not bit for bit. A re-weighted model (PyTorch only) takes the PyTorch path."""
    reference = patchcore(runtime="torch").fit(texture)
    lean = patchcore().fit(texture)
    assert lean.module_.lean and not getattr(reference.module_, "lean", False)
    for key in ("n_train", "n_patches", "bank_size", "feature_size", "weights_source"):
        assert lean.fit_info_[key] == reference.fit_info_[key], key
    assert lean.fit_info_["coreset_radius"] == pytest.approx(
        reference.fit_info_["coreset_radius"], rel=0.05
    )
    images = [s.path for s in load_category(texture).test_samples]
    x, y = reference.score(images), lean.score(images)
    np.testing.assert_allclose(y.scores, x.scores, rtol=0.05)
    assert evaluate(lean, texture).metrics["image_auroc"] == pytest.approx(
        evaluate(reference, texture).metrics["image_auroc"], abs=0.05
    )
    again = defectscope.load(lean.save(tmp_path / "pc.safetensors"))
    assert again.module_.lean
    np.testing.assert_array_equal(again.score(images).scores, y.scores)
    as_torch = defectscope.load(tmp_path / "pc.safetensors", runtime="torch")
    np.testing.assert_allclose(as_torch.score(images).scores, y.scores, rtol=1e-4)
    assert not getattr(patchcore(reweight=True).fit(texture).module_, "lean", False)


SCRIPT = """
import json, sys
import defectscope
from defectscope.engine.workflows.evaluation import evaluate
model = {model}
model.fit(sys.argv[1])
result = evaluate(model, sys.argv[1])
path = model.save(sys.argv[2])
loaded = defectscope.load(path)
verdicts = loaded.predict(sys.argv[3:])
print(json.dumps({{
    "lean": bool(getattr(loaded.module_, "lean", False)),
    "auroc": result.metrics["image_auroc"],
    "scores": [p.score for p in verdicts],
    "torch": "torch" in sys.modules,
    "timm": "timm" in sys.modules,
}}))
"""


COMMON = "num_workers=1, batch_size=8, seed=11"


@pytest.mark.parametrize("name", ["padim", "patchcore"])
def test_fit_evaluate_and_predict_without_importing_torch(name, pair, texture, tmp_path):
    if name == "padim":
        first = pair[1]
        code = f"defectscope.PaDiM(image_size={SIZE}, n_features=40, {COMMON})"
    else:
        first = patchcore().fit(texture)  # (also caches the graph)
        code = f"defectscope.PatchCore(image_size={2 * SIZE}, coreset_ratio=0.1, {COMMON})"
    images = [str(s.path) for s in load_category(texture).test_samples][:4]
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(SCRIPT.format(model=code)),
            str(texture),
            str(tmp_path / "m.safetensors"),
            *images,
        ],
        capture_output=True,
        text=True,
        env={**os.environ},  # DEFECTSCOPE_CACHE: the session cache, with the graph in it
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["lean"] and not got["torch"] and not got["timm"]
    assert got["auroc"] == pytest.approx(evaluate(first, texture).metrics["image_auroc"], abs=1e-3)
    np.testing.assert_allclose(got["scores"], first.score(images).scores, rtol=1e-4)


def test_lean_patchcore_scores_the_mean_of_k_nearest_as_pytorch_does(texture, tmp_path):
    """k_nearest > 1 runs torch-free: the same bank gives the PyTorch module's scores, a saved
    model loads lean and scores the same, and it can take new images without a refit."""
    import torch

    from defectscope.ops.knn import k_nearest
    from defectscope.ops.search import mean_nearest_distance

    rng = np.random.default_rng(3)
    bank, queries = rng.normal(size=(900, 24)), rng.normal(size=(150, 24))
    bank, queries = bank.astype(np.float32), queries.astype(np.float32)
    for k in (1, 3, 900):
        want = k_nearest(torch.from_numpy(queries), torch.from_numpy(bank), k, chunk=256)
        got = mean_nearest_distance(queries, bank, k, chunk=256)
        np.testing.assert_allclose(got, want[0].mean(dim=1).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="k must be between 1 and the bank size 900"):
        mean_nearest_distance(queries, bank, 901)

    reference = patchcore(runtime="torch", k_nearest=3).fit(texture)
    lean = patchcore(k_nearest=3).fit(texture)
    assert lean.module_.lean and lean.module_.k == 3 and lean.module_.index is None
    images = [s.path for s in load_category(texture).test_samples]
    np.testing.assert_allclose(lean.score(images).scores, reference.score(images).scores, rtol=0.05)
    # the lean module with the PyTorch bank scores what the PyTorch module does
    file = reference.save(tmp_path / "k3.safetensors")
    loaded = defectscope.load(file, runtime="onnxruntime")
    assert loaded.module_.lean
    np.testing.assert_allclose(
        loaded.score(images).scores, reference.score(images).scores, rtol=1e-4
    )
    before = len(loaded.module_.bank)
    loaded.update(sorted((texture / "train" / "good").glob("*.png"))[:2])
    assert len(loaded.module_.bank) > before and loaded.module_.k == 3


def test_lean_scores_are_the_same_bits_on_one_scoring_thread_or_several(texture, monkeypatch):
    """A lean PatchCore's pieces of a batch scored side by side give the fit (threshold,
    out-of-fold scores, bank) and the scores and maps that one piece after another gives."""
    from defectscope.engine.runtimes import parallel

    images = [s.path for s in load_category(texture).test_samples]
    results = {}
    for threads in (1, 3):
        monkeypatch.setattr(parallel, "scoring_threads", lambda threads=threads: threads)
        model = patchcore().fit(texture)  # batches of 8: 2 pieces of 4 images
        assert model.module_.lean
        results[threads] = model, model.score(images)
    (one, scored_one), (three, scored_three) = results[1], results[3]
    assert one.threshold_ == three.threshold_
    np.testing.assert_array_equal(one.out_of_fold_scores_, three.out_of_fold_scores_)
    np.testing.assert_array_equal(one.module_.bank, three.module_.bank)
    np.testing.assert_array_equal(scored_one.scores, scored_three.scores)
    np.testing.assert_array_equal(scored_one.maps, scored_three.maps)


def test_pieces_run_side_by_side_in_order_with_blas_on_one_thread(monkeypatch):
    """map_pieces: results in the pieces' order, BLAS on one thread while pieces run and as it
    was after, a piece's own pieces run in its thread, the first error raised to the caller."""
    import threading

    from threadpoolctl import threadpool_info

    from defectscope.engine.runtimes import parallel

    def blas_threads():
        return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]

    before = blas_threads()
    monkeypatch.setattr(parallel, "scoring_threads", lambda: 2)
    seen = []

    def piece(x):
        seen.append((threading.current_thread().name, blas_threads()))
        inner = parallel.map_pieces(lambda y: (threading.current_thread().name, y), [1, 2])
        assert {name for name, _ in inner} == {threading.current_thread().name}
        return x * x

    assert parallel.map_pieces(piece, list(range(9))) == [x * x for x in range(9)]
    assert all(name.startswith("scoring") for name, _ in seen)
    assert all(set(threads) <= {1} for _, threads in seen)
    assert blas_threads() == before

    def failing(x):
        if x == 3:
            raise ValueError("piece 3")
        return x

    with pytest.raises(ValueError, match="piece 3"):
        parallel.map_pieces(failing, list(range(6)))
    assert blas_threads() == before
    monkeypatch.setattr(parallel, "scoring_threads", lambda: 1)
    assert (
        parallel.map_pieces(lambda x: threading.current_thread().name, [0, 1])
        == [threading.current_thread().name] * 2
    )


@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_out_of_fold_scores_read_the_features_the_folds_were_fed(detector, texture, monkeypatch):
    """A fit keeps the fp32 features of the images it feeds and scores them out of fold from
    what it kept: the network sees each training image once (not twice), and the threshold,
    out-of-fold and synthetic scores and the model are the bits of a fit that keeps nothing."""
    from defectscope.models import lean

    seen, made, fits = [], [], {}
    make = {"patchcore": patchcore, "padim": small}[detector]
    memo_bytes = lean.MEMO_BYTES
    original = lean.LeanEmbedding.__init__

    def counting(self, features, *args, **kwargs):
        limit = lean.MEMO_BYTES

        def counted(images):
            seen.append((limit, len(images)))
            return features(images)

        original(self, counted, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(lean.LeanEmbedding, "__init__", counting)
    for limit in (memo_bytes, 0):
        monkeypatch.setattr(lean, "MEMO_BYTES", limit)
        fits[limit] = make().fit(texture)
        assert fits[limit].module_.lean
    assert made and all(embedding.memo is None for embedding in made)  # dropped after the fit
    kept, computed = fits[memo_bytes], fits[0]
    n_train = len(kept.out_of_fold_scores_)
    through = {limit: sum(n for lim, n in seen if lim == limit) for limit in (memo_bytes, 0)}
    assert through[0] - through[memo_bytes] == n_train  # each image's second pass saved
    assert kept.threshold_ == computed.threshold_
    np.testing.assert_array_equal(kept.out_of_fold_scores_, computed.out_of_fold_scores_)
    np.testing.assert_array_equal(kept.synthetic_scores_, computed.synthetic_scores_)
    with_memo, without = kept.module_, computed.module_
    for name in ("bank", "mean", "precision_chol_lower"):
        if hasattr(without, name):
            np.testing.assert_array_equal(getattr(with_memo, name), getattr(without, name))


def test_feature_memo_keeps_within_its_limit_and_serves_only_what_it_holds(tmp_path):
    """Found by content and gain target; a batch with one unknown image is not served; the
    limit stops keeping (whole images only); threads read side by side."""
    from concurrent.futures import ThreadPoolExecutor

    from defectscope.models.lean import FeatureMemo

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 16, 12, 3), dtype=np.uint8)
    feats = rng.standard_normal((6, 20, 7)).astype(np.float32)
    per_image = feats[0].nbytes
    memo = FeatureMemo(limit=4 * per_image + 1)
    memo.put(images[:3], 0.5, feats[:3])
    memo.put(images[2:], 0.5, feats[2:])  # image 2 again: kept once; room for one more only
    assert memo.used == 4 * per_image
    np.testing.assert_array_equal(memo.get(images[:4], 0.5), feats[:4])
    np.testing.assert_array_equal(memo.get(images[[3, 0]], 0.5), feats[[3, 0]])
    assert memo.get(images[:5], 0.5) is None  # image 4 did not fit
    assert memo.get(images[:2], 0.25) is None  # another gain target: other features
    changed = images[:1].copy()
    changed[0, 0, 0, 0] ^= 1
    assert memo.get(changed, 0.5) is None
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: memo.get(images[i % 4 : i % 4 + 1], 0.5), range(64)))
    for i, g in enumerate(got):
        np.testing.assert_array_equal(g, feats[i % 4 : i % 4 + 1])
    memo.close()
    assert memo.get(images[:1], 0.5) is None


def test_kept_features_take_a_share_of_the_free_disk_and_end_with_the_block(monkeypatch):
    """The memo is bounded by a quarter of the temporary directory's free space as well as by
    MEMO_BYTES; the embedding computes again once the block ends."""
    import shutil
    from collections import namedtuple

    from defectscope.models import lean

    calls = []

    def features(x):
        calls.append(len(x))
        return (
            np.ones((len(x), 5, 2, 3), dtype=np.float32)
            * x.mean(axis=(1, 2, 3))[:, None, None, None]
        )

    embedding = lean.LeanEmbedding(features, "none", (2, 3))
    images = np.random.default_rng(1).integers(0, 255, (4, 8, 8, 3), dtype=np.uint8)
    per_image = 2 * 3 * 5 * 4
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(0, 0, 4 * 2 * per_image))
    with lean.remembered_features(embedding):
        first = embedding.fp32(images, 0.5)  # room for two of the four
        assert embedding.memo.used == 2 * per_image
        np.testing.assert_array_equal(embedding(images[:2], 0.5), first[:2])
        assert calls == [4]  # served: the network was not run again
        np.testing.assert_array_equal(embedding(images, 0.5), first)
        assert calls == [4, 4]  # two were not kept: all four computed
    assert embedding.memo is None
    embedding(images[:2], 0.5)
    assert calls == [4, 4, 2]
