"""fit --auto: candidates ranked by synthetic defects and a lighting probe, without labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectscope.auto import (
    MARGIN,
    Candidate,
    aspect_kept,
    auto_fit,
    candidates,
    ranking_auroc,
    summary,
)
from defectscope.engine.fitting.estimator import LIGHTING_GAINS, relit
from defectscope.engine.rules.operating import check_fit_info
from defectscope.errors import ConfigError

from .conftest import SIZE

ENGINE = {"batch_size": 8, "num_workers": 1}
#: no time budget: which candidates run must not depend on how fast this machine is today
UNBOUNDED = 1e9


def _patchcore(label="patchcore", **params):
    return Candidate(label, "patchcore", {"image_size": SIZE, **params})


def _padim(label="padim", **params):
    return Candidate(label, "padim", {"image_size": SIZE, "n_features": 40, **params}, cost=0.7)


def _fit_seeing(texture, pool):
    """``auto_fit`` of ``pool`` without a budget, and the detectors it reported, in order."""
    seen = []
    model = auto_fit(
        texture,
        candidates_=pool,
        budget_s=UNBOUNDED,
        on_candidate=lambda r, d: seen.append(d),
        **ENGINE,
    )
    return model, seen


def test_candidates_start_with_the_default_and_keep_a_portrait_camera_s_shape():
    square = candidates((256, 256))
    assert square[0].label == "patchcore (defaults)" and square[0].params == {}
    assert not any("aspect" in c.label for c in square)
    assert {c.model for c in square} == {"patchcore", "padim"}
    portrait = candidates((512, 384))  # tire: 384 wide, 512 high
    kept = [c for c in portrait if "aspect" in c.label]
    assert len(kept) == 1 and kept[0].params == {"image_size": 288, "image_height": 384}
    assert aspect_kept(512, 384) == (384, 288)
    h, w = aspect_kept(300, 900)  # a wide camera: about 320 x 320 pixels, shape kept
    assert h % 32 == 0 and w % 32 == 0 and abs(w / h - 3) < 0.5
    assert 0.8 < h * w / 320**2 < 1.25


def test_relit_scales_brightness_in_turn_and_clips():
    batch = np.full((4, 8, 8, 3), 200, dtype=np.uint8)
    out = relit(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    expected = [min(255, round(200 * g)) for g in LIGHTING_GAINS]
    assert [int(out[i, 0, 0, 0]) for i in range(4)] == expected * 2
    assert [int(relit(batch, first=1)[i, 0, 0, 0]) for i in range(2)] == expected[::-1]


def test_ranking_auroc_counts_the_relit_parts_as_good():
    good = np.array([0.0, 1.0, 2.0])
    syn = np.array([3.0, 4.0])
    assert ranking_auroc(good, None, syn) == 1.0
    # a configuration that scores a change of light like a defect ranks lower
    assert ranking_auroc(good, np.array([5.0, 5.0]), syn) < 1.0
    assert ranking_auroc(good, np.array([0.5, 0.5]), syn) == 1.0


def test_the_lighting_probe_changes_neither_the_model_nor_its_threshold(texture):
    from defectscope import PatchCore

    plain = PatchCore(image_size=SIZE, **ENGINE).fit(texture)
    probed = PatchCore(image_size=SIZE, **ENGINE).fit(texture, lighting_probe=True)
    assert probed.threshold_ == plain.threshold_
    np.testing.assert_array_equal(probed.out_of_fold_scores_, plain.out_of_fold_scores_)
    assert plain.lighting_scores_ is None
    assert probed.lighting_scores_.shape == (np.isfinite(plain.out_of_fold_scores_).sum(),)
    assert np.isfinite(probed.lighting_scores_).all()


def test_auto_keeps_the_best_ranked_candidate_and_records_every_one(texture, tmp_path):
    seen = []
    pool = [_patchcore(), _padim(), _patchcore("patchcore none", illumination="none")]
    model = auto_fit(
        texture,
        candidates_=pool,
        budget_s=UNBOUNDED,
        on_candidate=lambda r, d: seen.append((r, d)),
        **ENGINE,
    )
    record = model.fit_info_["auto"]
    *fits, combined = record["candidates"]
    assert [r["label"] for r in fits] == [c.label for c in pool]
    # last, the ensemble of the two best-ranked candidates, ranked the same way
    top = sorted(fits, key=lambda r: -r["ranking_auroc"])[:2]
    assert combined["label"] == "ensemble of " + " + ".join(r["label"] for r in top)
    assert combined["model"] == "ensemble" and "skipped" not in combined
    assert [r for r, _ in seen] == record["candidates"]
    assert all(d is not None and d.threshold_ is not None for _, d in seen)
    assert seen[-1][1].name == "ensemble"
    # the winner: the first of the best, a later one winning only by more than MARGIN
    best = record["candidates"][0]
    for r in record["candidates"][1:]:
        if r["ranking_auroc"] > best["ranking_auroc"] + MARGIN:
            best = r
    assert record["chosen"] == best["label"]
    assert model.name == best["model"]
    assert model.input_shape == (SIZE, SIZE)
    for r in record["candidates"]:
        assert 0 <= r["ranking_auroc"] <= 1 and 0 <= r["lighting_false_reject"] <= 1
    assert "auto chose " + best["label"] in summary(record)
    # an ordinary model: saved and loaded with its record; the threshold is its own fit's
    path = model.save(tmp_path / "m.safetensors")
    import defectscope

    loaded = defectscope.load(path)
    assert loaded.fit_info_["auto"] == json.loads(json.dumps(record))
    assert loaded.threshold_ == model.threshold_
    good = sorted((texture / "test" / "good").iterdir())
    np.testing.assert_allclose(loaded.score(good).scores, model.score(good).scores, rtol=1e-5)


def test_of_two_equal_candidates_the_first_stays(texture):
    pool = [_padim("first"), _padim("same again")]
    record = auto_fit(texture, candidates_=pool, budget_s=UNBOUNDED, **ENGINE).fit_info_["auto"]
    a, b, both = record["candidates"]
    assert a["ranking_auroc"] == b["ranking_auroc"]
    # the ensemble of a model and its copy ranks as the model does: no margin, not chosen
    assert both["label"] == "ensemble of first + same again"
    assert both["ranking_auroc"] == pytest.approx(a["ranking_auroc"], abs=1e-6)
    assert record["chosen"] == "first"


def test_the_ensemble_combines_the_best_two_whose_scores_pair(texture):
    """Scores pair only within one input shape (and folds): the ensemble candidate takes the
    best two that pair, or says that none do."""
    wide = Candidate("patchcore 96", "patchcore", {"image_size": SIZE + 32})
    pool = [_patchcore(), wide, _padim()]
    model, seen = _fit_seeing(texture, pool)
    *_, combined = model.fit_info_["auto"]["candidates"]
    assert combined["label"] == "ensemble of padim + patchcore" or combined["label"] == (
        "ensemble of patchcore + padim"
    )
    assert "skipped" not in combined and seen[-1].name == "ensemble"
    assert [m.input_shape for m in seen[-1].members] == [(SIZE, SIZE)] * 2
    record = auto_fit(texture, candidates_=pool[:2], budget_s=UNBOUNDED, **ENGINE).fit_info_["auto"]
    *_, unpaired = record["candidates"]
    assert unpaired["model"] == "ensemble" and "share an input size" in unpaired["skipped"]
    assert "could not combine" in summary(record)


def test_the_budget_skips_what_would_not_fit_but_never_the_first(texture):
    pool = [_padim("first"), _patchcore("second"), _padim("third")]
    seen = []
    model = auto_fit(
        texture, candidates_=pool, budget_s=1e-3, on_candidate=lambda r, d: seen.append(d), **ENGINE
    )
    record = model.fit_info_["auto"]
    assert record["chosen"] == "first" and record["budget_s"] == 1e-3
    assert [("skipped" in r) for r in record["candidates"]] == [False, True, True]
    assert "budget" in record["candidates"][1]["skipped"]
    assert seen[0] is not None and seen[1:] == [None, None]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"budget_s": 0}, "budget_s must be a number of seconds > 0, got 0"),
        ({"budget_s": -5}, "> 0, got -5"),
        ({"budget_s": float("nan")}, "> 0, got nan"),
        ({"budget_s": float("inf")}, "> 0, got inf"),
        ({"layers": ["blocks.1"]}, "auto chooses the detector and its options itself; drop layers"),
        ({"synthetic": 0}, "synthetic=0 leaves none"),
        ({"candidates_": []}, "at least one candidate"),
        ({"batch_size": 0}, "batch_size"),
    ],
)
def test_auto_refuses_bad_requests_before_any_fit(texture, kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        auto_fit(texture, **{"candidates_": [_padim()], **ENGINE, **kwargs})


def test_a_damaged_auto_record_is_refused_on_load(texture):
    record = {
        "chosen": "a",
        "rule": "best",
        "seconds": 3.0,
        "budget_s": None,
        "candidates": [
            {
                "label": "a",
                "model": "padim",
                "params": {},
                "ranking_auroc": 0.9,
                "synthetic_auroc": 0.9,
                "synthetic_catch_rate": 0.5,
                "lighting_false_reject": 0.1,
                "seconds": 1.0,
            },
            {"label": "b", "skipped": "no time"},
        ],
    }
    check_fit_info({"auto": record})
    damaged = [
        {**record, "chosen": "b"},  # a skipped candidate cannot win
        {**record, "chosen": "zz"},
        {**record, "candidates": []},
        {**record, "seconds": float("nan")},
        {**record, "candidates": [{**record["candidates"][0], "ranking_auroc": 2.0}]},
        {**record, "candidates": [{**record["candidates"][0], "label": 3}]},
        "auto",
    ]
    for bad in damaged:
        with pytest.raises(ConfigError, match="auto record is damaged"):
            check_fit_info({"auto": bad})


def test_fit_auto_on_the_command_line_saves_the_winner_and_says_why(texture, tmp_path, capsys):
    from defectscope.cli import main

    project = str(tmp_path / "runs")
    argv = ["fit", "--auto", "--data", str(texture), "--project", project, "-q"]
    # a budget of a millisecond: the first candidate (the default configuration) only
    assert main([*argv, "--budget-s", "0.001", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "auto chose patchcore (defaults)" in out and "not tried" in out
    assert "false rejects" in out or "rejected" in out
    run = json.loads((tmp_path / "runs" / "fit" / "texture" / "run.json").read_text())
    assert run["fitted"]["auto"]["chosen"] == "patchcore (defaults)"
    config = json.loads((tmp_path / "runs" / "fit" / "texture" / "config.json").read_text())
    assert config["model"] == "patchcore" and config["batch_size"] == 8


def test_an_ensemble_chosen_on_the_command_line_is_saved_and_predicts(
    texture, tmp_path, capsys, monkeypatch
):
    import defectscope.auto as auto
    from defectscope.cli import main

    small = [_patchcore(), _padim()]
    monkeypatch.setattr(auto, "candidates", lambda shape=None: small)
    monkeypatch.setattr(auto, "MARGIN", -1.0)  # every later candidate wins: the ensemble last
    project = str(tmp_path / "runs")
    argv = ["fit", "--auto", "--data", str(texture), "--project", project, "-q"]
    assert main([*argv, "--budget-s", "1e9", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "auto chose ensemble of " in out and "fitted ensemble on 24 images" in out
    run = tmp_path / "runs" / "fit" / "texture"
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "ensemble"
    assert sorted(m["detector"] for m in config["members"]) == ["padim", "patchcore"]
    assert all(m["image_size"] == SIZE for m in config["members"])
    assert main(["fit", "--config", str(run / "config.json"), "-q"]) == 2
    assert "not fitted in one step" in capsys.readouterr().err
    model = run / "model.safetensors"
    argv = ["predict", "--model", str(model), str(texture / "test"), "--project", project, "-q"]
    assert main(argv) == 0
    assert "images failed at threshold" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "padim"], "--auto chooses the detector; drop --model"),
        (["--n-features", "20"], "drop --n-features (or fit that detector without --auto)"),
        (["--layers", "blocks.1"], "drop --layers"),
        (["--budget-s", "0"], "--budget-s must be a number of seconds > 0, got 0"),
        (["--budget-s", "nan"], "--budget-s must be a number of seconds > 0, got nan"),
        (["--shards", "2"], "--auto fits here, unsharded"),
    ],
)
def test_fit_auto_refuses_bad_flags_in_one_line(texture, tmp_path, capsys, extra, message):
    from defectscope.cli import main

    argv = ["fit", "--auto", "--data", str(texture), "--project", str(tmp_path), "-q", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "fit").exists()


def test_budget_without_auto_and_auto_on_a_root_are_refused(mvtec_root, tmp_path, capsys):
    from defectscope.cli import main

    assert main(["fit", "--data", str(mvtec_root / "texture"), "--budget-s", "5", "-q"]) == 2
    assert "--budget-s bounds --auto" in capsys.readouterr().err
    assert main(["fit", "--auto", "--data", str(mvtec_root), "-q"]) == 2
    assert "--auto fits one category" in capsys.readouterr().err


def test_a_later_candidate_that_cannot_fit_is_passed_over(texture, monkeypatch):
    from defectscope.engine.fitting.estimator import Detector

    real = Detector.fit

    def fit(self, *args, **kwargs):
        if self.seed == 7:  # this candidate's fit fails (out of memory, say)
            raise ConfigError("this candidate cannot fit here")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Detector, "fit", fit)
    pool = [_padim("first"), _padim("failing", seed=7)]
    model, seen = _fit_seeing(texture, pool)
    record = model.fit_info_["auto"]
    assert record["chosen"] == "first" and seen[1] is None
    assert record["candidates"][1]["skipped"] == "failed: this candidate cannot fit here"
    assert "failing: could not fit (this candidate cannot fit here)" in summary(record)
    check_fit_info(model.fit_info_.to_dict())
    # the first candidate failing is the data's problem: it is raised
    with pytest.raises(ConfigError, match="this candidate cannot fit here"):
        auto_fit(texture, candidates_=pool[::-1], budget_s=UNBOUNDED, **ENGINE)


def test_a_boolean_budget_is_refused(texture):
    with pytest.raises(ConfigError, match="budget_s must be a number of seconds > 0, got True"):
        auto_fit(texture, candidates_=[_padim()], budget_s=True, **ENGINE)


def test_the_report_shows_every_candidate_and_the_choice():
    from defectscope.report.html import _auto_table

    record = {
        "chosen": "a <b>",
        "rule": "best",
        "seconds": 3.0,
        "budget_s": None,
        "candidates": [
            {
                "label": "a <b>",
                "model": "padim",
                "params": {},
                "ranking_auroc": 0.9,
                "synthetic_auroc": 0.91,
                "synthetic_catch_rate": 0.5,
                "lighting_false_reject": 0.1,
                "seconds": 1.0,
            },
            {"label": "b", "skipped": "expected 9 s; 1 s of the 4 s budget left"},
            {"label": "c", "skipped": "failed: out of memory"},
        ],
    }
    page = "".join(_auto_table(record))
    assert "a &lt;b&gt; (chosen)" in page and "<b>" not in page.replace("<b>a &lt;b&gt;", "")
    assert "not tried: expected 9 s" in page and "could not fit: out of memory" in page
    assert "0.900" in page and "0.910" in page and "50%" in page and "10%" in page
