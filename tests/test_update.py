"""Learning from the line without a refit: `update` folds new good images into a fitted PaDiM
(its Gaussians merged: the same model as a fit on all the images) or PatchCore (a coreset of
their patches appended: no score can rise), re-chooses the threshold by the fit's rule, records
the lineage, keeps the previous version and restores it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from defectscope import PaDiM, PatchCore
from defectscope.cli import main
from defectscope.data import load_category
from defectscope.errors import ConfigError

from .conftest import PADIM_ARGS, SIZE
from .fuzz.mutate import split_safetensors

FAST = {"image_size": SIZE, "batch_size": 8, "num_workers": 1, "progress": False}


def test_padim_update_equals_a_fit_on_all_the_images(texture):
    train = list(load_category(texture).train_paths)
    tests = sorted((texture / "test").rglob("*.png"))
    params = {**FAST, "n_features": 40}
    first = PaDiM(**params).fit(train[:-4])
    assert getattr(first.module_, "lean", False)  # the torch-free path, where update runs
    entry = first.update(train[-4:])
    everything = PaDiM(**params).fit(train)
    np.testing.assert_allclose(first.score(tests).scores, everything.score(tests).scores, rtol=2e-3)
    assert first.fit_info_["n_train"] == everything.fit_info_["n_train"] == len(train)
    assert entry["added"] == 4 and len(entry["added_sha256"]) == 4
    assert first.fit_info_["lineage"] == [entry]


def test_a_lineage_entry_edited_by_hand_is_refused_on_load():
    from defectscope.engine.rules.operating import check_fit_info

    entry = {
        "date": "2026-11-30T10:00:00+00:00",
        "defectscope_version": "0.1.0",
        "previous_model_sha256": "a" * 64,
        "added": 2,
        "added_sha256": ["b" * 64, "c" * 64],
        "escapes_sha256": [],
        "threshold_before": 1.5,
        "threshold_after": 1.25,
    }
    check_fit_info({"lineage": [entry, {**entry, "previous_model_sha256": None}]})
    damaged = [
        {k: v for k, v in entry.items() if k != "added_sha256"},  # what /model/update reads
        {**entry, "added_sha256": "b" * 64},
        {**entry, "added_sha256": ["B" * 64, "c" * 64]},
        {**entry, "added_sha256": ["b" * 63, "c" * 64]},
        {**entry, "added": 3},  # counts and digests disagree
        {**entry, "added": True},
        {**entry, "escapes_sha256": None},
        {**entry, "previous_model_sha256": "x"},
        {**entry, "threshold_after": float("inf")},
        {**entry, "date": 20261130},
        "an update",
    ]
    for bad in damaged:
        with pytest.raises(ConfigError, match="lineage must be a list of update records"):
            check_fit_info({"lineage": [entry, bad]})


def test_patchcore_update_teaches_a_part_and_raises_no_score(texture):
    train = list(load_category(texture).train_paths)
    model = PatchCore(**FAST, coreset_ratio=0.1).fit(train)
    others = sorted((texture / "test" / "good").glob("*.png"))
    taught = sorted((texture / "test" / "scratch").glob("*.png"))[0]
    before = model.score([taught, *others]).scores
    assert model.predict(taught)[0].is_anomalous  # a part the model flags
    bank = model.fit_info_["bank_size"]
    model.update([taught])
    after = model.score([taught, *others]).scores
    assert after[0] < before[0] and not model.predict(taught)[0].is_anomalous
    assert np.all(after[1:] <= before[1:] + 1e-4)  # the bank only grew
    assert model.fit_info_["bank_size"] > bank
    assert model.fit_info_["n_train"] == len(train) + 1


def test_update_cli_lineage_restore_and_refusals(texture, tmp_path, capsys):
    project = tmp_path / "runs"
    assert main(["fit", "--data", str(texture), "--project", str(project), *PADIM_ARGS]) == 0
    run = project / "fit" / "texture"
    model = run / "model.safetensors"
    original = model.read_bytes()
    new = sorted((texture / "test" / "good").glob("*.png"))[:2]
    escape = sorted((texture / "test" / "scratch").glob("*.png"))[0]
    argv = ["update", "--model", str(run), "--good", *map(str, new), "--defective", str(escape)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "added 2 good images" in out and "1 escapes recorded for calibrate" in out
    header, _ = split_safetensors(model.read_bytes())
    fitted = json.loads(header["__metadata__"]["config"])["fitted"]
    [entry] = fitted["lineage"]
    assert entry["added"] == 2 and len(entry["escapes_sha256"]) == 1
    assert (run / "model.previous.safetensors").read_bytes() == original
    assert main(["predict", "--model", str(run), str(new[0]), "--project", str(tmp_path)]) == 0
    assert main(["update", "--model", str(run), "--restore"]) == 0
    assert model.read_bytes() == original

    # one line each, and the model untouched
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    refusals = [
        (["--good", str(bad)], "not an image PIL can read"),
        ([], "update needs --good"),
        (["--restore", "--good", str(new[0])], "--restore takes no images"),
    ]
    for more, said in refusals:
        assert main(["update", "--model", str(run), *more]) == 2
        assert said in capsys.readouterr().err
        assert model.read_bytes() == original
    assert main(["export", "--model", str(run), "-q"]) == 0
    assert main(["update", "--model", str(run / "model.onnx"), "--good", str(new[0])]) == 2
    assert "then export it again" in capsys.readouterr().err


def test_detectors_that_cannot_be_updated_say_so(texture):
    from defectscope import Autoencoder

    train = list(load_category(texture).train_paths)
    model = Autoencoder(image_size=SIZE, epochs=1, batch_size=8, progress=False).fit(train)
    with pytest.raises(ConfigError, match="cannot take new images without a refit"):
        model.update(train[:1])
    image = np.asarray(Image.open(train[0]).convert("RGB"))
    assert model.score([image]).scores.shape == (1,)  # the model is unchanged and still works
