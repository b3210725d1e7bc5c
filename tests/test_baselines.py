import numpy as np
import pytest

import defectscope
from defectscope import Autoencoder, Classifier
from defectscope.data import load_category
from defectscope.data.splits import stratified_folds
from defectscope.data.synthetic import make_category
from defectscope.engine.workflows.benchmark import cross_validate
from defectscope.engine.workflows.evaluation import evaluate
from defectscope.errors import ConfigError, DataError

from .conftest import SIZE


def small_autoencoder(**kwargs):
    return Autoencoder(**{"image_size": SIZE, "epochs": 15, "num_workers": 1, **kwargs})


def small_classifier(**kwargs):
    return Classifier(**{"image_size": SIZE, "num_workers": 1, **kwargs})


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = make_category(
        tmp_path_factory.mktemp("cls") / "c",
        kind="object",
        size=SIZE,
        n_train=3,
        n_test_good=30,
        n_test_defect=10,
        seed=4,
        defects=("stain", "hole", "scratch"),
    )
    return load_category(root)


def test_autoencoder_beats_chance(texture):
    model = small_autoencoder().fit(texture)
    result = evaluate(model, texture)
    assert result.metrics["image_auroc"] >= 0.8
    assert result.metrics["pixel_auroc"] >= 0.8
    history = model.fit_info_["history"]
    assert len(history["train"]) == len(history["val"]) >= 1


def test_autoencoder_rejects_bad_options(texture):
    with pytest.raises(ConfigError, match="unknown augmentation 'hflp'; did you mean 'hflip'"):
        small_autoencoder(augment=["hflp"]).fit(texture)
    with pytest.raises(ConfigError, match="image_size must be a multiple of 16, got 72"):
        small_autoencoder(image_size=72).fit(texture)


def test_folds_are_disjoint_stratified_and_complete():
    labels = np.array([True] * 10 + [False] * 25)
    folds = stratified_folds(labels, 5, seed=0)
    joined = np.concatenate(folds)
    assert sorted(joined.tolist()) == list(range(35))  # every sample exactly once
    for fold in folds:
        assert labels[fold].sum() == 2 and (~labels[fold]).sum() == 5


def test_classifier_cross_validation_beats_chance(labelled):
    result = cross_validate(lambda: small_classifier(folds=4), labelled)
    folds = [set(f) for f in result.extra["folds"]]
    assert len(folds) == 4
    assert all(a.isdisjoint(b) for i, a in enumerate(folds) for b in folds[i + 1 :])
    assert result.metrics["image_auroc"] >= 0.75
    # The accuracy column, recomputed independently from the per-image outcomes.
    truth = np.array([r.is_anomalous for r in result.images])
    scores = np.array([r.score for r in result.images])
    assert result.metrics["image_accuracy_fixed"] == pytest.approx(np.mean((scores > 0.5) == truth))
    assert 0.5 < result.metrics["image_accuracy_fixed"] <= 1.0


def test_classifier_round_trip_and_refuses_unlabelled(labelled, tmp_path):
    paths = [s.path for s in labelled.test_samples]
    labels = [s.is_anomalous for s in labelled.test_samples]
    model = small_classifier(epochs=3).fit(paths, labels)
    loaded = defectscope.load(model.save(tmp_path / "c.safetensors"))
    np.testing.assert_array_equal(loaded.score(paths).scores, model.score(paths).scores)
    with pytest.raises(DataError, match="the classifier is supervised"):
        small_classifier().fit(labelled)
