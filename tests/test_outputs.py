"""Production outputs: thresholds under control, fixed colour scales, regions, predict files."""

from __future__ import annotations

import csv
import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import defectscope
from defectscope.cli import main
from defectscope.engine.workflows.calibration import choose_threshold, outcome
from defectscope.regions import find_regions

from .conftest import PADIM_ARGS


@pytest.fixture(scope="module")
def model_file(texture, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    assert main(["fit", "--data", str(texture), "--project", str(project), *PADIM_ARGS]) == 0
    return project / "fit" / "texture" / "model.safetensors"


def test_find_regions_boxes_areas_peaks_and_scaling():
    m = np.zeros((20, 20), dtype=np.float32)
    m[2:5, 3:7] = 2.0  # 3 x 4 = 12 px, peak 2
    m[10:12, 10:11] = 5.0  # 2 x 1 = 2 px, peak 5
    m[15, 15] = 0.5  # below the threshold
    regions = find_regions(m, 1.0)
    assert [(r.x0, r.y0, r.x1, r.y1, r.area, r.peak) for r in regions] == [
        (10, 10, 11, 12, 2, 5.0),
        (3, 2, 7, 5, 12, 2.0),
    ]
    scaled = find_regions(m, 1.0, (40, 60))  # original image 40 wide, 60 high
    assert (scaled[1].x0, scaled[1].y0, scaled[1].x1, scaled[1].y1) == (6, 6, 14, 15)
    assert scaled[1].area == 12 * 2 * 3
    assert find_regions(m, 10.0) == []


def test_choose_threshold_rules():
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=bool)
    scores = np.array([1.0, 2.0, 3.0, 6.0, 4.0, 5.0, 7.0, 8.0])
    t, rule = choose_threshold(labels, scores)
    assert rule == "balanced catches and false rejects" and t == pytest.approx(3.5)
    t, rule = choose_threshold(labels, scores, best_f1=True)
    assert rule == "best F1" and outcome(labels, scores, t).f1 == pytest.approx(8 / 9)
    t, _ = choose_threshold(labels, scores, false_reject_rate=0.0)
    assert t == 6.0 and outcome(labels, scores, t).rejected == 0
    t, _ = choose_threshold(labels, scores, false_reject_rate=0.25)
    assert t == 3.0 and outcome(labels, scores, t).rejected == 1
    t, _ = choose_threshold(labels, scores, escape_rate=0.0)
    assert outcome(labels, scores, t).caught == 4 and t == pytest.approx(3.5)
    t, _ = choose_threshold(labels, scores, escape_rate=0.25)
    assert outcome(labels, scores, t).caught == 3 and t == pytest.approx(4.5)


def test_default_calibration_does_not_follow_the_mix_of_labelled_parts():
    """The default threshold weighs the catch rate and the false-reject rate equally, so the
    same parts with each defective one counted ten times keep it; best F1 follows the mix
    down and rejects most good parts once defective ones outnumber them."""
    rng = np.random.default_rng(7)
    good = rng.normal(0.0, 1.0, 25)
    bad = rng.normal(1.5, 1.0, 20)
    for repeat in (1, 10):
        scores = np.concatenate([good, np.tile(bad, repeat)])
        labels = np.arange(len(scores)) >= len(good)
        t, _ = choose_threshold(labels, scores)
        f1_t, _ = choose_threshold(labels, scores, best_f1=True)
        if repeat == 1:
            balanced, first_f1 = t, f1_t
        else:
            assert t == balanced
            assert f1_t < first_f1
            assert outcome(labels, scores, f1_t).false_reject_rate > 0.5
    assert outcome(labels, scores, balanced).false_reject_rate < 0.35
    from defectscope.errors import ConfigError

    with pytest.raises(ConfigError, match="give one rule"):
        choose_threshold(labels, scores, best_f1=True, escape_rate=0.1)


def test_calibrate_sets_and_saves_the_threshold_with_its_source(model_file, texture, tmp_path):
    before = defectscope.load(model_file)
    out = tmp_path / "calibrated.safetensors"
    args = ["calibrate", "--model", str(model_file), "--data", str(texture), "--output", str(out)]
    assert main([*args, "--false-reject-rate", "0", "-q"]) == 0
    after = defectscope.load(out)
    source = after.fit_info_["threshold_source"]
    assert "false-reject rate <= 0" in source["rule"]
    assert source["previous_threshold"] == pytest.approx(before.threshold_)
    samples = defectscope.data.load_category(texture).test_samples
    good = [s.path for s in samples if not s.is_anomalous]
    assert not any(p.is_anomalous for p in after.predict(good))  # no good part rejected
    assert after.threshold_ == pytest.approx(after.score(good).scores.max())


def test_calibrate_refuses_an_exported_file(tmp_path, capsys):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"x")
    assert main(["calibrate", "--model", str(onnx), "--data", str(tmp_path)]) == 2
    assert "then export it again" in capsys.readouterr().err


def test_predict_threshold_and_normalised_score(model_file, texture):
    model = defectscope.load(model_file)
    images = sorted((texture / "test").rglob("*.png"))
    default = model.predict(images)
    assert all(p.threshold == model.threshold_ for p in default)
    middle = float(np.median([p.score for p in default]))
    chosen = model.predict(images, threshold=middle)
    assert [p.is_anomalous for p in chosen] == [p.score > middle for p in default]
    assert model.normalize([middle], middle)[0] == pytest.approx(0.5)
    normalized = [p.normalized_score for p in chosen]
    assert all(0 <= n <= 1 for n in normalized)
    order = np.argsort([p.score for p in chosen])
    assert np.all(np.diff(np.asarray(normalized)[order]) >= 0)  # monotone in the score


def test_same_image_same_overlay_whatever_it_is_predicted_with(model_file, texture, tmp_path):
    target = sorted((texture / "test" / "scratch").glob("*.png"))[0]
    others = sorted((texture / "test").rglob("*.png"))
    project = str(tmp_path / "runs")
    common = ["predict", "--model", str(model_file), "--project", project, "-q"]
    assert main([*common, "--name", "alone", str(target)]) == 0
    assert main([*common, "--name", "many", *map(str, others)]) == 0
    alone = np.asarray(Image.open(tmp_path / "runs/predict/alone/overlays/000.png"))
    many = np.asarray(Image.open(tmp_path / "runs/predict/many/overlays/scratch/000.png"))
    # the banner's label line differs (file name vs relative path): compare the heatmap below
    assert alone.shape == many.shape
    banner = alone.shape[0] - 64  # the image is SIZE high, under the banner
    assert np.array_equal(alone[banner:, :64], many[banner:, :64])


def test_predict_files_say_what_and_who(model_file, texture, tmp_path, capsys):
    project = tmp_path / "runs"
    folder = texture / "test"
    args = ["predict", "--model", str(model_file), str(folder), "--project", str(project)]
    assert main([*args, "--save", "fail", "--threshold", "1e9", "-q"]) == 0
    run = project / "predict" / "predict"
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert {"name", "normalized_score", "verdict", "n_regions", "regions", "overlay"} <= set(
        rows[0]
    )
    assert all(r["verdict"] == "pass" and r["overlay"] == "" for r in rows)  # nothing failed
    assert not (run / "overlays").exists()
    meta = json.loads((run / "run.json").read_text())
    assert meta["model_sha256"] == defectscope.digest.file_sha256(model_file)
    assert meta["defectscope_version"] == defectscope.__version__
    assert meta["threshold_used"] == 1e9 and meta["started"].endswith("+00:00")
    assert "failed at threshold 1e+09 (given with --threshold" in capsys.readouterr().out

    assert main([*args, "--save", "fail", "--threshold=-1e9", "-q", "--name", "all"]) == 0
    rows = list(csv.DictReader(open(project / "predict" / "all" / "predictions.csv")))
    assert all(r["verdict"] == "fail" for r in rows)
    assert all((project / "predict" / "all" / r["overlay"]).is_file() for r in rows)
    assert rows[0]["overlay"].startswith("overlays/") and "/" in rows[0]["name"]


def test_model_file_copy_keeps_fixed_scales(model_file, tmp_path):
    copy = shutil.copy(model_file, tmp_path / "m.safetensors")
    model = defectscope.load(copy)
    low, high = model.colour_scale
    assert low < high
    assert model.fit_info_["score_scale"]["spread"] > 0


def test_label_components_matches_scipy():
    from scipy import ndimage

    from defectscope.regions import label_components

    rng = np.random.default_rng(0)
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        ours, n_ours = label_components(mask)
        theirs, n_theirs = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        assert n_ours == n_theirs
        assert len(set(zip(ours[mask].tolist(), theirs[mask].tolist()))) == n_ours  # same sets
        assert ((ours > 0) == mask).all()


def test_predict_takes_pil_images_folders_and_gives_maps_at_image_size(fitted, texture, tmp_path):
    from PIL import Image

    from defectscope.errors import ConfigError, DataError

    path = sorted((texture / "test" / "scratch").glob("*.png"))[0]
    [from_path] = fitted.predict(path)
    [from_pil] = fitted.predict(Image.open(path))
    assert from_pil.score == pytest.approx(from_path.score, rel=1e-5)
    grey16 = Image.fromarray(np.asarray(Image.open(path).convert("L")).astype(np.uint16) * 16)
    assert len(fitted.predict([grey16, Image.open(path).convert("L")])) == 2
    # a category folder gives its test images only, never train/ or ground_truth/
    from_folder = fitted.predict(texture)
    tests = sorted(p for p in (texture / "test").rglob("*.png"))
    assert [p.path for p in from_folder] == [str(p) for p in tests]
    big = np.asarray(Image.open(path).convert("RGB").resize((150, 90)))
    [wide] = fitted.predict(big, map_size="image")
    assert wide.anomaly_map.shape == (90, 150)
    assert fitted.predict(big)[0].anomaly_map.shape == fitted.input_shape
    with pytest.raises(ConfigError, match="map_size must be 'model' or 'image'"):
        fitted.predict(big, map_size="full")
    with pytest.raises(DataError, match="at least 16 px"):
        fitted.predict(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot score a int"):
        fitted.predict([3])
    with pytest.raises(DataError, match="no image files in"):
        fitted.predict(tmp_path)


def test_decodes_kept_while_scoring_are_the_files_full_size_images(tmp_path):
    """What scoring keeps of an image for its overlay is what decoding the file at full size
    gives (grey, RGBA, EXIF-rotated JPEG), taken once; nothing past the budget, nothing of an
    image scaled from more than 8 bits, nothing outside the block."""
    from defectscope.data.images import keeping_decoded, load_image

    rng = np.random.default_rng(4)
    files = {
        "grey.png": Image.fromarray(rng.integers(0, 256, (40, 56), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (48, 30, 4), dtype=np.uint8)),
        "turned.jpg": Image.fromarray(rng.integers(0, 256, (36, 52, 3), dtype=np.uint8)),
    }
    for name, image in files.items():
        exif = Image.Exif()
        if name.endswith(".jpg"):
            exif[0x0112] = 6  # shown turned a quarter: the decode is 52 high, 36 wide
        image.save(tmp_path / name, exif=exif)
    paths = [tmp_path / name for name in files]
    with keeping_decoded() as kept:
        for path in paths:
            assert load_image(path, (32, 24)).shape == (32, 24, 3)
        for path in paths:
            full = load_image(path, None)
            got = kept.take(path)
            assert got is not None and np.array_equal(got, full)
            assert kept.take(path) is None  # taken once
        assert kept.size == 0
        assert load_image(paths[2], None).shape == (52, 36, 3)
        assert kept.take(paths[2]) is None  # a full-size decode keeps nothing
        load_image(paths[0], 32, bits=12)
        assert kept.take(paths[0]) is None  # scaled by a recorded bit depth: not the overlay's
    with keeping_decoded(budget=40 * 56 * 3 + 1) as kept:
        load_image(paths[0], 32)
        load_image(paths[1], 32)  # past the budget
        assert kept.take(paths[0]) is not None and kept.take(paths[1]) is None
    load_image(paths[0], 32)
    assert kept.take(paths[0]) is None  # the block has ended


def test_overlays_drawn_on_kept_decodes_are_the_same_files(model_file, texture, tmp_path):
    """predict draws each overlay on the decode its scoring kept: no image is decoded a second
    time, and every file written is the same as when each image is decoded again."""
    from defectscope.data import images
    from defectscope.engine.workflows import predicting

    decoded = []
    load = predicting.load_image

    def counting(path, size, *args):
        decoded.append(size)
        return load(path, size, *args)

    common = ["predict", "--model", str(model_file), "--project", str(tmp_path), "-q"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(predicting, "load_image", counting)
        assert main([*common, "--name", "kept", str(texture / "test")]) == 0
        assert decoded == []
        patch.setattr(images, "KEEP_BYTES", 0)
        assert main([*common, "--name", "again", str(texture / "test")]) == 0
    n = len(list((texture / "test").rglob("*.png")))
    assert decoded == [None] * n
    kept, again = tmp_path / "predict" / "kept", tmp_path / "predict" / "again"
    written = sorted(p.relative_to(kept) for p in kept.rglob("*") if p.is_file())
    assert len([p for p in written if p.parts[0] == "overlays"]) == n
    for relative in written:
        if relative.name != "run.json":
            assert (kept / relative).read_bytes() == (again / relative).read_bytes(), relative


@pytest.mark.parametrize(
    "shape", [(1, 1), (5, 7), (37, 23, 1), (16, 9, 2), (31, 45, 3), (8, 3, 4), (2, 300, 3)]
)
def test_png_bytes_decode_to_the_same_pixels(shape, tmp_path):
    from defectscope.report.visualize import png_bytes, save_png

    rng = np.random.default_rng(sum(shape))
    noisy = rng.integers(0, 256, size=shape, dtype=np.uint8)
    flat = np.full(shape, 200, dtype=np.uint8)  # long runs: what the "up" filter zeroes
    for array in (noisy, flat, np.ascontiguousarray(noisy[::-1])):
        with Image.open(save_png(array, tmp_path / "a.png")) as image:
            image.verify()  # every chunk's CRC
        with Image.open(tmp_path / "a.png") as image:
            assert image.format == "PNG" and image.size == (shape[1], shape[0])
            decoded = np.asarray(image)
        assert np.array_equal(decoded, array.reshape(decoded.shape))
    # not uint8: Pillow writes it, as before
    wide = rng.integers(0, 65536, size=(6, 5), dtype=np.uint16)
    with Image.open(io.BytesIO(png_bytes(wide))) as image:
        assert np.array_equal(np.asarray(image), wide)
