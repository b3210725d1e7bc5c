import numpy as np
import pytest
import torch

import defectscope
from defectscope.data import load_category
from defectscope.engine.workflows.evaluation import evaluate
from defectscope.errors import ConfigError, ModelFileError, NotFittedError
from defectscope.results import Prediction

from .conftest import SIZE, small_padim


def test_fit_returns_self_and_learns_trailing_underscore_state(texture):
    model = small_padim(runtime="torch")
    assert model.fit(texture) is model
    positions = (SIZE // 4) ** 2
    assert model.module_.mean.shape == (positions, 50)
    assert model.module_.precision_chol.shape == (positions, 50, 50)
    assert model.module_.feature_index.shape == (50,)
    assert np.isfinite(model.threshold_)


def test_unfitted_raises_clear_error(texture):
    sample = load_category(texture).test_samples[0].path
    with pytest.raises(NotFittedError, match="not fitted yet; call fit first"):
        small_padim().predict([sample])


def test_predict_returns_typed_results(fitted, texture):
    samples = load_category(texture).test_samples[:3]
    predictions = fitted.predict([s.path for s in samples])
    assert len(predictions) == 3
    for p, s in zip(predictions, samples):
        assert isinstance(p, Prediction)
        assert p.anomaly_map.shape == (SIZE, SIZE) and p.anomaly_map.dtype == np.float32
        assert p.score == pytest.approx(float(p.anomaly_map.max()))
        assert p.is_anomalous == (p.score > fitted.threshold_)
        assert p.path == str(s.path)


def test_detects_synthetic_defects(fitted, texture):
    result = evaluate(fitted, texture)
    assert result.metrics["image_auroc"] >= 0.9
    assert result.metrics["pixel_auroc"] >= 0.9
    assert result.metrics["aupro_30"] >= 0.7


def test_training_images_score_below_threshold(fitted, texture):
    train = load_category(texture).train_paths
    scores = fitted.score(list(train)).scores
    # Fitted images are in-distribution: nearly all pass the held-out threshold.
    assert np.mean(scores <= fitted.threshold_) >= 0.9


def test_seed_fixes_channels_and_is_saved(texture, tmp_path):
    a = small_padim(runtime="torch", seed=3).fit(texture)
    b = small_padim(runtime="torch", seed=3).fit(texture)
    c = small_padim(runtime="torch", seed=4).fit(texture)
    assert torch.equal(a.module_.feature_index, b.module_.feature_index)
    assert not torch.equal(a.module_.feature_index, c.module_.feature_index)
    loaded = defectscope.load(a.save(tmp_path / "a.safetensors"))
    assert torch.equal(loaded.module_.feature_index, a.module_.feature_index)


def test_save_load_round_trip_identical_scores(fitted, texture, tmp_path):
    paths = [s.path for s in load_category(texture).test_samples]
    path = fitted.save(tmp_path / "run")
    assert path.name == "model.safetensors"
    loaded = defectscope.load(tmp_path / "run")
    assert loaded.threshold_ == fitted.threshold_
    np.testing.assert_array_equal(loaded.score(paths).scores, fitted.score(paths).scores)


def test_onnxruntime_matches_torch(fitted, texture, tmp_path):
    paths = [s.path for s in load_category(texture).test_samples]
    reference = fitted.score(paths)
    fast = defectscope.load(fitted.save(tmp_path / "m.safetensors"), runtime="onnxruntime")
    got = fast.score(paths)
    np.testing.assert_allclose(got.scores, reference.scores, rtol=1e-3)
    np.testing.assert_allclose(
        got.maps, reference.maps, rtol=1e-3, atol=1e-3 * reference.maps.max()
    )


def _tensor_bytes(obj, seen=None) -> int:
    """Bytes of every tensor reachable from ``obj`` through attributes, dicts, lists and
    modules (each storage once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple, set)):
        return sum(_tensor_bytes(v, seen) for v in obj)
    if hasattr(obj, "__dict__") and type(obj).__module__.startswith(
        ("defectscope", "torch", "timm")  # torch covers torchvision; timm holds the backbones
    ):
        return _tensor_bytes(vars(obj), seen)
    return 0


@pytest.mark.parametrize("n_train", [12, 24])
def test_fit_memory_does_not_keep_embeddings(texture, tmp_path, n_train):
    """What a fitted model holds does not grow with the training set: the Gaussian, the
    backbone and the upsampling matrices, whatever the number of images."""
    import shutil

    folder = tmp_path / "few"
    shutil.copytree(texture, folder)
    for extra in sorted((folder / "train" / "good").iterdir())[n_train:]:
        extra.unlink()
    model = small_padim(runtime="torch").fit(folder)
    # besides the module, the fit keeps one float32 score per training image (out of fold)
    # and per synthetic defect, and a fixed number of synthetic examples for the report
    diagnostics = (model.out_of_fold_scores_, model.synthetic_scores_, model.synthetic_examples_)
    assert model.out_of_fold_scores_.nbytes == 4 * n_train
    assert model.synthetic_scores_.nbytes == 4 * min(200, 8 * n_train)
    assert len(model.synthetic_examples_) == 12
    held = _tensor_bytes(model) - _tensor_bytes(diagnostics)
    module = model.module_
    tensors = [*module.parameters(), *module.buffers()]  # non-persistent buffers included
    fitted = sum(t.numel() * t.element_size() for t in tensors)
    assert held == fitted  # nothing else outside the module's own tensors
    positions, dim = (SIZE // 4) ** 2, 50
    gaussian = 4 * positions * dim * (dim + 1)
    backbone = sum(
        t.numel() * t.element_size()
        for t in [*module.embedding.parameters(), *module.embedding.buffers()]
    )
    assert fitted <= gaussian + backbone + 4 * 2 * SIZE * SIZE + 8 * dim


def test_corrupted_and_incompatible_model_files(fitted, tmp_path):
    path = fitted.save(tmp_path / "m.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="truncated or corrupted|damaged tensors"):
        defectscope.load(damaged)
    with pytest.raises(ModelFileError, match="model file not found"):
        defectscope.load(tmp_path / "nothing.safetensors")

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    save_file(
        load_file(str(path)),
        str(tmp_path / "old.safetensors"),
        metadata={**metadata, "format_version": "99"},
    )
    with pytest.raises(ModelFileError, match="format version 99"):
        defectscope.load(tmp_path / "old.safetensors")


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    path = fitted.save(tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.numpy.save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"n_features": 10_000}, "n_features must be between 1 and 176"),
        ({"regularization": 0.0}, r"regularization must be in \[1e-8, 1e4\]"),
        ({"regularization": 1e-300}, r"regularization must be in \[1e-8, 1e4\]"),
        ({"regularization": float("inf")}, "regularization: expected a finite number, got inf"),
        ({"sigma": float("nan")}, "sigma: expected a finite number, got nan"),
        ({"seed": -1}, r"seed must be an int in \[0, 2\*\*32\)"),
        ({"holdout": 0.0}, "holdout must be in"),
        ({"threshold_folds": 1}, "threshold_folds must be an int >= 2"),
        ({"max_false_reject": 1.0}, r"max_false_reject must be in \[0, 1\)"),
        ({"threshold_rule": "median"}, "unknown threshold_rule 'median'"),
        ({"runtime": "tensorrt"}, "unknown runtime 'tensorrt'"),
        ({"image_size": 8}, "image_size must be an int >= 32"),
        ({"threshold_quantile": 0.2}, r"threshold_quantile must be in \[0.5, 1\], got 0.2"),
        ({"n_features": "abc"}, "n_features: expected an integer or None, got 'abc'"),
        ({"layers": "blocks.1"}, "layers: expected a list of strings or None, got 'blocks.1'"),
    ],
)
def test_invalid_parameters(texture, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        small_padim(**kwargs).fit(texture)


def test_changed_weights_file_is_refused_on_load(texture, tmp_path):
    from defectscope.backbones.networks import build_backbone
    from defectscope.backbones.specs import resolve_spec
    from defectscope.errors import BackboneError

    source, _ = build_backbone(resolve_spec("resnet18"), "random")
    weights = tmp_path / "r18.pth"
    torch.save(source.state_dict(), weights)
    model = small_padim(backbone="resnet18", weights=str(weights), runtime="torch").fit(texture)
    path = model.save(tmp_path / "m.safetensors")
    sample = [load_category(texture).test_samples[0].path]
    defectscope.load(path).score(sample)  # unchanged file: loads and scores

    torch.manual_seed(1)
    other, _ = build_backbone(resolve_spec("resnet18"), "random")
    torch.save(other.state_dict(), weights)
    with pytest.raises(BackboneError, match=r"r18.pth changed since the model was fitted"):
        defectscope.load(path).score(sample)
    weights.unlink()
    with pytest.raises(BackboneError, match="weights file this model was fitted with is missing"):
        defectscope.load(path).score(sample)


def test_closed_folds_are_packed_and_merge_to_the_same_statistics():
    """Only the fold being fed is held whole; closed folds keep the scatter's lower triangle,
    and the merge of every fold (or every fold but one) equals the whole-matrix merge: the
    lower triangle to the bit, and so the Cholesky factor of the packed merge."""
    from defectscope.ops.moments import (
        FoldAccumulators,
        GaussianAccumulator,
        precision_cholesky_of,
    )

    rng = np.random.default_rng(4)
    positions, dim = 300, 12  # more positions than one merge chunk
    batches = {
        f: [rng.normal(f, 1 + f, size=(5, positions, dim)) for _ in range(2)] for f in range(4)
    }
    folds = FoldAccumulators(positions, dim)
    whole = {}
    for f, parts in batches.items():
        folds.start(f)
        whole[f] = GaussianAccumulator(positions, dim)
        for x in parts:
            folds.current.update(x)
            whole[f].update(x)
    closed = [acc for f, acc in folds.folds.items() if f != 3]
    assert all(isinstance(acc, dict) for acc in closed)  # packed
    assert isinstance(folds.folds[3], GaussianAccumulator)
    full = positions * dim * dim * 8
    assert folds.nbytes < full + 3 * full * (dim + 1) / (2 * dim) + 4 * positions * dim * 8 + 1
    rows, cols = np.tril_indices(dim)
    for without in (None, 0, 3):
        reference = GaussianAccumulator(positions, dim)
        for f in range(4):
            if f != without:
                reference.merge(whole[f])
        got = folds.merged(without=without)
        assert got.count == reference.count == 10 * (4 - (without is not None))
        np.testing.assert_array_equal(got.mean, reference.mean)
        np.testing.assert_array_equal(got.scatter_lower, reference.scatter[:, rows, cols])
        # the factor of the packed triangle is the whole symmetric matrix's, to the bit
        np.testing.assert_array_equal(
            precision_cholesky_of(got, 0.01, chunk=128),
            precision_cholesky_of(reference, 0.01, chunk=128),
        )
    assert folds.count == 40
    # feeding a closed fold again unpacks it: nothing of it is lost
    folds.start(1)
    folds.current.update(batches[1][0])
    reference = GaussianAccumulator(positions, dim)
    for f in range(4):
        reference.merge(whole[f])
    reference.update(batches[1][0])
    np.testing.assert_allclose(
        folds.merged().scatter_lower, reference.scatter[:, rows, cols], rtol=1e-9
    )
