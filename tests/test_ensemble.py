"""Ensembles: fitted models whose scores, each normalised by its own out-of-fold good scores,
are averaged; one file, loaded, exported and refused like any model."""

from __future__ import annotations

import json

import numpy as np
import pytest

import defectscope
from defectscope.engine.fitting.ensemble import Ensemble, combine, spread_of
from defectscope.engine.rules.operating import choose
from defectscope.errors import ConfigError, ModelFileError

from .conftest import SIZE, small_padim
from .files import resave

ENGINE = {"image_size": SIZE, "batch_size": 8, "num_workers": 1, "progress": False}


def _patchcore(**params):
    return defectscope.PatchCore(**{**ENGINE, **params})


def _padim(**params):
    return small_padim(**{"n_features": 40, "progress": False, **params})


@pytest.fixture(scope="module")
def members(texture):
    return [_patchcore().fit(texture), _padim().fit(texture)]


@pytest.fixture(scope="module")
def ensemble(members):
    return Ensemble.of(members, labels=["pc", "padim"])


@pytest.fixture(scope="module")
def images(texture):
    return sorted((texture / "test").rglob("*.png"))


def test_the_score_is_the_mean_of_the_members_normalised_scores(members, ensemble, images):
    norms = []
    for m in members:
        good = np.asarray(m.fit_info_.threshold_source["scores"]["good"])
        q1, q3 = np.quantile(good, [0.25, 0.75])
        norms.append((np.median(good), (q3 - q1) / 1.349))
    np.testing.assert_allclose(ensemble.norms, norms, rtol=1e-12)
    want = np.mean([(m.score(images).scores - a) / b for m, (a, b) in zip(members, norms)], 0)
    got = ensemble.score(images)
    np.testing.assert_allclose(got.scores, want, rtol=1e-5, atol=1e-5)
    want_maps = np.mean([(m.score(images).maps - a) / b for m, (a, b) in zip(members, norms)], 0)
    np.testing.assert_allclose(got.maps, want_maps, rtol=1e-4, atol=1e-4)
    # the threshold: the members' rule on the combined out-of-fold and synthetic scores
    kept = [m.fit_info_.threshold_source["scores"] for m in members]
    good = combine([np.asarray(k["good"]) for k in kept], ensemble.norms)
    synthetic = combine([np.asarray(k["synthetic"]) for k in kept], ensemble.norms)
    point = choose(good, synthetic, max_false_reject=0.1)
    assert ensemble.threshold_ == point.threshold
    assert ensemble.fit_info_.operating_point == point.to_dict()
    assert ensemble.fit_info_.threshold_on_map is False  # the score is not the map's maximum
    recorded = ensemble.fit_info_["ensemble"]["members"]
    assert [r["label"] for r in recorded] == ["pc", "padim"]
    assert [r["detector"] for r in recorded] == ["patchcore", "padim"]
    verdicts = ensemble.predict(images)
    assert [p.is_anomalous for p in verdicts] == list(got.scores > ensemble.threshold_)


def test_the_spread_is_never_zero():
    assert spread_of(np.array([1.0, 2.0, 3.0, 4.0, 5.0])) == pytest.approx((3.0, 2.0 / 1.349))
    median, spread = spread_of(np.array([2.0, 2.0, 2.0, 2.0, 9.0]))  # quartiles tie
    assert median == 2.0 and spread > 0
    assert spread_of(np.zeros(4))[1] > 0


def test_a_saved_ensemble_loads_exports_and_scores_the_same(ensemble, images, tmp_path):
    path = ensemble.save(tmp_path / "ensemble.safetensors")
    loaded = defectscope.load(path)
    assert isinstance(loaded, Ensemble) and loaded.threshold_ == ensemble.threshold_
    assert [m.name for m in loaded.members] == ["patchcore", "padim"]
    want = ensemble.score(images).scores
    np.testing.assert_array_equal(loaded.score(images).scores, want)
    assert loaded.fit_info_.to_dict() == json.loads(json.dumps(ensemble.fit_info_.to_dict()))
    onnx = defectscope.export_onnx(loaded, tmp_path / "ensemble.onnx")
    exported = defectscope.load(onnx)
    assert exported.name == "ensemble" and exported.threshold_ == ensemble.threshold_
    np.testing.assert_allclose(exported.score(images).scores, want, rtol=1e-3, atol=1e-3)
    with pytest.raises(ConfigError, match="cannot take new images"):
        loaded.update(images[:2])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"edit": lambda h: h["fitted"]["ensemble"]["members"][0].update(spread=0.0)}, "> 0"),
        ({"edit": lambda h: h["config"]["members"].reverse()}, "does not match"),
        ({"edit": lambda h: h["config"]["headers"].pop()}, "member headers expected"),
        ({"add": {"stray": np.zeros(3, dtype=np.float32)}}, "belongs to no ensemble member"),
        ({"edit": lambda h: h["config"].update(input_shape=[SIZE, SIZE * 2])}, "input shape"),
    ],
)
def test_an_edited_ensemble_file_is_refused(ensemble, tmp_path, kwargs, message):
    path = ensemble.save(tmp_path / "ensemble.safetensors")
    edited = resave(path, tmp_path / "edited.safetensors", **kwargs)
    with pytest.raises(ModelFileError, match=message):
        defectscope.load(edited)


def test_a_member_s_missing_tensor_is_refused(ensemble, tmp_path):
    path = ensemble.save(tmp_path / "ensemble.safetensors")
    from safetensors.numpy import load_file

    name = next(k for k in load_file(str(path)) if k.startswith("m1."))
    with pytest.raises(ModelFileError):
        defectscope.load(resave(path, tmp_path / "edited.safetensors", drop=(name,)))


@pytest.mark.parametrize(
    ("other", "message"),
    [
        (lambda t, o: _patchcore(image_size=SIZE + 32).fit(t), "disagree on input size"),
        (lambda t, o: _patchcore(seed=1).fit(t), "disagree on seed"),
        (lambda t, o: _patchcore(threshold_folds=3).fit(t), "different folds"),
        (lambda t, o: _patchcore(synthetic=50).fit(t), "disagree on synthetic"),
        (lambda t, o: _patchcore().fit(o), "different images"),
    ],
)
def test_members_whose_scores_do_not_pair_are_refused(members, texture, mvtec_root, other, message):
    model = other(texture, mvtec_root / "object")
    with pytest.raises(ConfigError, match=message) as info:
        Ensemble.of([members[0], model])
    assert "\n" not in str(info.value)


def test_what_is_not_a_fitted_model_with_kept_scores_is_refused(members, ensemble, texture):
    with pytest.raises(ConfigError, match="2 to 8"):
        Ensemble.of(members[:1])
    with pytest.raises(ConfigError, match="not exported files or ensembles"):
        Ensemble.of([members[0], ensemble])
    calibrated = _patchcore().fit(texture)
    calibrated.set_threshold(1.0, {"rule": "calibrated by hand", "threshold": 1.0})
    with pytest.raises(ConfigError, match="no out-of-fold scores"):
        Ensemble.of([members[0], calibrated])


def test_the_command_line_combines_saved_models(members, texture, tmp_path, capsys):
    from defectscope.cli import main

    files = [m.save(tmp_path / f"{m.name}.safetensors") for m in members]
    project = str(tmp_path / "runs")
    argv = ["ensemble", *map(str, files), "--project", project, "--name", "both", "-q"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "combined 2 models (patchcore, padim)" in out and "expected false rejects" in out
    saved = tmp_path / "runs" / "ensemble" / "both" / "model.safetensors"
    assert isinstance(defectscope.load(saved), Ensemble)
    run = json.loads((saved.parent / "run.json").read_text())
    assert run["fitted"]["ensemble"]["members"][0]["label"] == str(files[0])
    argv = ["predict", "--model", str(saved), str(texture / "test"), "--project", project, "-q"]
    assert main(argv) == 0
    assert "images failed at threshold" in capsys.readouterr().out
    wide = _patchcore(image_size=SIZE + 32).fit(texture).save(tmp_path / "wide.safetensors")
    assert main(["ensemble", str(files[0]), str(wide), "--project", project, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "disagree on input size" in err and len(err.splitlines()) == 1


def test_a_padim_fold_costs_what_a_closed_fold_keeps():
    from defectscope.models.padim.lean import FoldedStatistics
    from defectscope.ops.moments import FoldAccumulators

    stats = FoldedStatistics()
    stats.folds = FoldAccumulators(positions=12, dim=5)
    stats.folds.start(1)  # fold 0 is closed: packed
    closed = stats.folds.folds[0]
    assert stats.fold_bytes() == closed["mean"].nbytes + closed["scatter_lower"].nbytes
    assert stats.fold_bytes() < stats.folds.current.nbytes


def test_the_service_serves_an_ensemble_as_the_library_scores_it(ensemble, images, tmp_path):
    pytest.importorskip("fastapi", reason="the serve extra: pip install 'defectscope[serve]'")
    from fastapi.testclient import TestClient

    from defectscope.serve.app import create_app

    path = ensemble.save(tmp_path / "ensemble.safetensors")
    files = images[:3]
    with TestClient(create_app(path)) as client:
        info = client.get("/model").json()
        assert info["detector"] == "ensemble" and info["threshold"] == ensemble.threshold_
        assert info["config"]["members"] == ["patchcore", "padim"]
        response = client.post(
            "/predict", files=[("files", (p.name, p.read_bytes(), "image/png")) for p in files]
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = ensemble.predict(files)
    assert [r["score"] for r in results] == pytest.approx([p.score for p in expected], rel=1e-5)
    assert [r["verdict"] == "fail" for r in results] == [p.is_anomalous for p in expected]


def test_ray_s_predict_actor_loads_and_scores_an_ensemble(ensemble, images, tmp_path):
    """What each Ray actor runs, called here without a cluster (tests/test_cluster.py runs the
    actors on Ray)."""
    from defectscope.cluster.predict import PredictActor

    path = ensemble.save(tmp_path / "ensemble.safetensors")
    actor = PredictActor(str(path), str(tmp_path / "out"), "none", None, {"batch_size": 8})
    files = [str(p) for p in images[:4]]
    batch = {"index": np.arange(4), "path": np.array(files), "name": np.array(files)}
    rows = actor(batch)
    expected = ensemble.predict(files)
    assert rows["score"] == pytest.approx([p.score for p in expected], rel=1e-5)
    assert rows["is_anomalous"] == [p.is_anomalous for p in expected]
