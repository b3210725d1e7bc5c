"""Lighting shifts: shortcut baselines warn, the shift check fires, gain correction recovers."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

import defectscope
from defectscope.cli import main
from defectscope.data.synthetic import make_category
from defectscope.engine.scoring.shortcuts import shortcut_aurocs
from defectscope.engine.workflows.evaluation import evaluate

from .conftest import SIZE


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """A category and its copy whose good test images are 25% darker (screw's situation:
    the good test parts were lit differently from training and from the defective ones)."""
    root = tmp_path_factory.mktemp("light")
    plain = make_category(
        root / "plain",
        kind="texture",
        size=SIZE,
        n_train=30,
        n_test_good=12,
        n_test_defect=8,
        seed=7,
    )
    dark = root / "dark"
    shutil.copytree(plain, dark)
    for path in (dark / "test" / "good").glob("*.png"):
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
        Image.fromarray((pixels * 0.75).astype(np.uint8)).save(path)
    return plain, dark


def small(illumination: str):
    return defectscope.PaDiM(
        image_size=SIZE,
        n_features=40,
        batch_size=8,
        num_workers=1,
        runtime="torch",
        illumination=illumination,
    )


def test_shortcut_scores_are_computed_both_ways():
    labels = np.array([False] * 5 + [True] * 5)
    means = np.array([10.0] * 5 + [20.0] * 5)  # defects brighter: AUROC 1
    got = shortcut_aurocs(labels, -means, means * 0, None)  # darker counts as well
    assert got["mean intensity"] == pytest.approx(1.0)
    assert got["intensity spread"] == pytest.approx(0.5)


def test_warnings_fire_and_gain_correction_recovers(shifted, tmp_path, capsys):
    plain, dark = shifted
    reference = evaluate(small("none").fit(plain), plain).metrics["image_auroc"]
    model = small("none").fit(dark)
    result = evaluate(model, dark)
    assert result.extra["shortcuts"]["mean intensity"] == pytest.approx(1.0)
    shift = [n for n in result.notices if "darker" in n or "brighter" in n]
    assert len(shift) == 1 and "dark/test/good: darker than the training images" in shift[0]
    assert "less contrast" in " ".join(n for n in result.notices if "test/good" in n)
    if result.metrics["image_auroc"] <= 1.0:  # a trivial score matches anything up to 1.0
        assert any(n.startswith("warning: dark (padim)") for n in result.notices)
    corrected = evaluate(small("gain").fit(dark), dark).metrics["image_auroc"]
    assert corrected >= reference - 0.05
    # the terminal shows both; with -q only the files do (notices.json, results.md)
    argv = ["benchmark", "--model", "padim", "--data", str(dark), "--project", str(tmp_path)]
    code = main([*argv, "--image-size", str(SIZE), "--n-features", "40"])
    err = capsys.readouterr().err
    assert code == 0 and "shift: dark/test/good: darker" in err and "trivial score" in err
    code = main([*argv, "--image-size", str(SIZE), "--n-features", "40", "-q"])
    assert code == 0 and "shift:" not in capsys.readouterr().err
    saved = (tmp_path / "benchmark" / "benchmark2" / "notices.json").read_text()
    assert "dark/test/good: darker" in saved and "trivial score" in saved


def test_predict_notices_another_mode_and_size(shifted, tmp_path, capsys):
    plain, _ = shifted
    project = tmp_path / "runs"
    argv = ["fit", "--model", "padim", "--data", str(plain), "--project", str(project)]
    assert main([*argv, "--image-size", str(SIZE), "--n-features", "40", "-q"]) == 0
    grey = tmp_path / "grey"
    grey.mkdir()
    for i, path in enumerate(sorted((plain / "test" / "good").glob("*.png"))[:3]):
        image = Image.open(path).convert("L")
        (image if i else image.resize((2 * SIZE, SIZE))).save(grey / path.name)
    model = project / "fit" / "plain"
    assert main(["predict", "--model", str(model), str(grey), "--project", str(project)]) == 0
    err = capsys.readouterr().err
    assert (
        "shift: 3 of 3 predicted images are in modes the training images were not: 3 L "
        "(grayscale); the model was fitted on RGB" in err
    )
    assert (
        f"shift: 1 of 3 predicted images have sizes outside the training images' {SIZE}x{SIZE}: "
        f"{2 * SIZE}x{SIZE} (1) (all are resized" in err
    )


def test_many_sizes_give_one_line_with_counts_and_ranges():
    from defectscope.engine.scoring.shortcuts import format_notices

    train = {"modes": {"RGB": 50}, "sizes": {f"{w}x{2 * w}": 1 for w in range(100, 150)}}
    seen = {
        "modes": {"RGB": 500, "L": 60, "I;16": 3, "P": 2, "CMYK": 1},
        "sizes": {f"{w}x{2 * w}": 1 for w in range(90, 656)},
    }
    lines = format_notices("test ", seen, train)
    assert len(lines) == 2
    assert lines[0].startswith(
        "shift: 66 of 566 test images are in modes the training images were not: 60 L "
        "(grayscale), 3 I;16"
    )
    assert "and 1 more modes" in lines[0]
    # inside the training range (100-149 wide, 200-298 high) is no news; outside it is counted
    assert lines[1].startswith(
        "shift: 516 of 566 test images have sizes outside the training images' 100-149 wide "
        "and 200-298 high (50 sizes): "
    )
    assert "and 513 more sizes" in lines[1] and len(lines[1]) < 400


@pytest.mark.parametrize("mode", ["none", "gain", "standardize", "local"])
def test_illumination_modes(mode):
    import torch

    from defectscope.models.features import Illumination

    gen = torch.Generator().manual_seed(0)
    images = 0.2 + 0.5 * torch.rand(2, 3, 48, 48, generator=gen)
    module = Illumination(mode)
    module.calibrate(images)
    out = module(images)
    assert out.shape == images.shape and bool(torch.isfinite(out).all())
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    brighter = module(images * 1.3)  # the same scene under a 30% brighter lamp
    change = float((brighter - out).abs().mean())
    if mode == "none":
        assert change > 0.1
    else:  # every correction undoes a global gain
        assert change < 0.01, change
    if mode == "gain":
        assert float(out.mean()) == pytest.approx(float(images.mean()), rel=1e-4)


@pytest.mark.parametrize("shape", [(3, 20, 24, 3), (2, 17, 33, 1), (1, 16, 16, 4)])
def test_grey_statistics_are_the_float32_mean_of_the_channels(shape):
    """The grey mean and spread of each image (the shortcut baselines, the shift check) are
    those of the channels' float32 mean, to the bit, whatever the number of channels."""
    from defectscope.engine.scoring.shortcuts import batch_stats

    batch = np.random.default_rng(5).integers(0, 256, shape, dtype=np.uint8)
    grey = batch.reshape(shape[0], -1, shape[-1]).mean(axis=2, dtype=np.float32)
    means, spreads = batch_stats(batch)
    assert means.dtype == spreads.dtype == np.float32
    np.testing.assert_array_equal(means, grey.mean(axis=1))
    np.testing.assert_array_equal(spreads, grey.std(axis=1))
    np.testing.assert_allclose(means, batch.reshape(shape[0], -1).mean(axis=1), rtol=1e-5)
