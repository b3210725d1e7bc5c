"""One contract for every registered detector (parametrised over the registry, not a list)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone

import defectscope
from defectscope.data import load_category
from defectscope.engine.fitting.estimator import ESTIMATORS
from defectscope.engine.runtimes.exported import export_onnx
from defectscope.errors import NotFittedError
from defectscope.models import DETECTORS

from .conftest import SIZE

#: small settings per detector so that the suite stays fast; every registered detector must
#: appear here (a new detector without them fails test_every_detector_has_small_settings)
SMALL = {
    "padim": {"n_features": 40, "runtime": "torch"},
    "patchcore": {"coreset_ratio": 0.05, "runtime": "torch"},
    "autoencoder": {"epochs": 3},
    "classifier": {"epochs": 3},
}


def test_every_detector_has_small_settings():
    assert set(SMALL) == set(DETECTORS)


def make(name: str, **extra):
    return ESTIMATORS[name](image_size=SIZE, batch_size=8, num_workers=1, **SMALL[name], **extra)


def fit(model, texture):
    category = load_category(texture)
    if model.info.supervised:
        samples = category.test_samples
        return model.fit([s.path for s in samples], [s.is_anomalous for s in samples])
    return model.fit(category)


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted_any(request, texture):
    model = make(request.param)
    with pytest.raises(NotFittedError, match="not fitted yet; call fit first"):
        model.score([load_category(texture).test_samples[0].path])
    assert fit(model, texture) is model
    return model


def test_scores_maps_and_round_trip(fitted_any, texture, tmp_path):
    samples = [s.path for s in load_category(texture).test_samples]
    scored = fitted_any.score(samples)
    assert scored.scores.shape == (len(samples),) and scored.scores.dtype == np.float32
    assert scored.maps.shape == (len(samples), SIZE, SIZE)
    assert np.isfinite(scored.scores).all() and np.isfinite(fitted_any.threshold_)
    # every training image counted once in the statistics of the shift check, the held-out
    # ones included (scored for the threshold; PaDiM then feeds them again to merge them)
    category = load_category(texture)
    seen = len(category.test_samples if fitted_any.info.supervised else category.train_paths)
    assert fitted_any.fit_info_["intensity"]["n"] == seen
    loaded = defectscope.load(fitted_any.save(tmp_path / "m.safetensors"))
    assert type(loaded) is type(fitted_any)
    assert loaded.threshold_ == fitted_any.threshold_
    np.testing.assert_array_equal(loaded.score(samples).scores, scored.scores)


def test_export_parity(fitted_any, texture, tmp_path):
    """The exported file, run without defectscope's torch path, gives the same scores/maps."""
    samples = [s.path for s in load_category(texture).test_samples]
    reference = fitted_any.score(samples)
    exported = defectscope.load(export_onnx(fitted_any, tmp_path / "m.onnx"))
    assert exported.threshold_ == fitted_any.threshold_ and exported.input_shape == (SIZE, SIZE)
    got = exported.score(samples)
    np.testing.assert_allclose(got.scores, reference.scores, rtol=1e-3, atol=1e-6)
    scale = float(np.abs(reference.maps).max())
    np.testing.assert_allclose(got.maps, reference.maps, rtol=1e-3, atol=1e-3 * scale)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_sklearn_estimator_contract(name):
    model = make(name, seed=3)
    params = model.get_params(deep=True)
    assert params["seed"] == 3 and params["image_size"] == SIZE
    copy = clone(model)
    assert type(copy) is type(model) and copy is not model
    assert copy.get_params() == params
    assert copy.set_params(seed=7) is copy and copy.seed == 7 and model.seed == 3
    with pytest.raises(defectscope.DefectscopeError, match="has no option 'sed'"):
        copy.set_params(sed=1)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sed'"):
        ESTIMATORS[name](sed=1)


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_constructor_signature_is_explicit(name):
    import inspect

    parameters = inspect.signature(ESTIMATORS[name]).parameters
    kinds = {p.kind for p in parameters.values()}
    assert kinds == {inspect.Parameter.KEYWORD_ONLY}  # no **kwargs, no positionals
    assert set(parameters) == set(DETECTORS[name].config.names()) | {
        "threshold_folds",
        "synthetic",
        "threshold_rule",
        "max_false_reject",
        "holdout",
        "threshold_quantile",
        "runtime",
        "precision",
        "batch_size",
        "num_workers",
        "progress",
    }


def test_public_names_come_from_the_registry_and_classes_are_documented():
    import defectscope
    from defectscope.config import field_help

    classes = {info.class_name for info in DETECTORS.values()}
    assert classes <= set(defectscope.__all__) and classes <= set(dir(defectscope))
    assert "PatchCore" in defectscope.__all__  # the default
    for name, info in DETECTORS.items():
        doc = ESTIMATORS[name].__doc__
        assert "Parameters\n----------" in doc and "Examples\n--------" in doc
        for option, text in field_help(info.config).items():
            assert f"\n{option} : " in doc, (name, option)
            assert text.split()[0] in doc


def test_scikit_learn_outlier_conventions(fitted, texture):
    images = (
        sorted((texture / "test" / "scratch").glob("*.png"))[:2]
        + sorted((texture / "test" / "good").glob("*.png"))[:2]
    )
    scores = fitted.score(images).scores
    np.testing.assert_allclose(fitted.score_samples(images), -scores, rtol=1e-6)
    decision = fitted.decision_function(images)
    assert list(decision < 0) == [p.is_anomalous for p in fitted.predict(images)]
    assert list(fitted.is_anomalous(scores)) == [p.is_anomalous for p in fitted.predict(images)]
