"""The fit record (``fit_info_``): typed, frozen, checked when made, and the same JSON a model
file's ``fitted`` header holds, key for key and in order."""

from __future__ import annotations

import dataclasses

import pytest

from defectscope.engine.persistence.files import read_header
from defectscope.engine.rules.record import ENGINE_FIELDS, FitInfo
from defectscope.errors import ConfigError


def test_the_record_is_frozen_and_typed(fitted):
    info = fitted.fit_info_
    assert isinstance(info, FitInfo)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.threshold_source = {}  # type: ignore[misc]
    assert isinstance(info.colour_scale, tuple) and len(info.colour_scale) == 2
    assert all(isinstance(x, float) for x in info.colour_scale)
    assert info.colour_scale == fitted.colour_scale
    assert info.threshold_on_map is True and info.bit_depth is None and info.shards == 1
    assert info.n_train == info.intensity["n"] > 0
    assert info.operating_point == info.threshold_source["operating_point"]
    assert info.threshold_source["threshold"] == fitted.threshold_


def test_the_record_is_what_the_model_file_holds_in_the_same_order(fitted, tmp_path):
    file = fitted.save(tmp_path / "model.safetensors")
    header = {k: v for k, v in read_header(file)["fitted"].items() if k != "threshold"}
    assert fitted.fit_info_.to_dict() == header
    assert list(fitted.fit_info_) == list(header)
    assert fitted.fit_info_ == header and len(fitted.fit_info_) == len(header)
    # the detector's own figures first, then the engine's fields in the order fit writes them
    engine = [k for k in header if k in ENGINE_FIELDS]
    assert engine == [k for k in ENGINE_FIELDS if k in header]
    assert list(header)[: len(fitted.fit_info_.detector)] == list(fitted.fit_info_.detector)


def test_nothing_outside_changes_the_record(fitted):
    info = fitted.fit_info_
    copy = info.to_dict()
    copy["threshold_source"]["threshold"] = 1e9
    copy["colour_scale"][0] = -1.0
    assert info.threshold_source["threshold"] == fitted.threshold_
    assert info.colour_scale[0] != -1.0
    source = {"rule": "by hand", "threshold": 3.0}
    changed = info.replace(threshold_source=source)
    source["threshold"] = 4.0  # the caller's dict is not the record's
    assert changed.threshold_source == {"rule": "by hand", "threshold": 3.0}
    assert info.threshold_source["threshold"] == fitted.threshold_  # the original is unchanged
    assert changed.detector == info.detector and changed.present == info.present


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("colour_scale", [2.0, 1.0], "colour_scale must be two finite numbers"),
        ("threshold_on_map", "yes", "threshold_on_map must be true or false"),
        ("bit_depth", 8, "bit_depth must be an int in 9..32"),
        ("score_scale", {"good_median": 1.0, "spread": 0.0}, "score_scale must hold"),
        ("lineage", [{"date": "today"}], "lineage must be a list of update records"),
    ],
)
def test_a_record_with_a_wrong_field_cannot_be_made(fitted, field, value, message):
    with pytest.raises(ConfigError, match=message):
        fitted.fit_info_.replace(**{field: value})
    with pytest.raises(ConfigError, match=message):
        FitInfo.from_dict({field: value})


def test_the_threshold_and_its_source_change_together(texture, tmp_path):
    from defectscope.engine.workflows.calibration import calibrate

    from .conftest import small_padim

    model = small_padim().fit(texture)
    before = model.fit_info_
    with pytest.raises(ConfigError):
        model.set_threshold(1.0, {"rule": "by hand", "threshold": 2.0})
    assert model.fit_info_ is before  # nothing half-set
    _, after, source = calibrate(model, texture)
    assert model.threshold_ == after.threshold == source["threshold"]
    assert model.fit_info_.threshold_source == source
    assert source["previous_source"] == before.threshold_source
    assert model.fit_info_.detector == before.detector
