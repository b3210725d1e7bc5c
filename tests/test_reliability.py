"""Unusual and bad inputs: each gets one clear message or a documented, tested behaviour."""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defectscope.cli import main
from defectscope.data import images as image_io
from defectscope.data import load_category
from defectscope.data.images import image_size, load_image, to_rgb8
from defectscope.errors import BackboneError, DataError

from .conftest import PADIM_ARGS, SIZE


def _grey16(path: Path, values: np.ndarray) -> Path:
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I;16")
    return path


def test_12_bit_image_in_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))
    image = load_image(_grey16(tmp_path / "a.png", ramp), None)
    assert image.dtype == np.uint8 and image.shape == (32, 64, 3)
    # 0..4095 (12 bits) -> 0..255, not saturated to white as Pillow's convert("RGB") does
    assert image.min() == 0 and image.max() == 255
    assert abs(float(image[0, 32, 0]) - float(ramp[0, 32]) * 255 / 4095) <= 1


def test_16_bit_image_using_the_full_range(tmp_path):
    values = np.full((20, 20), 32768, dtype=np.uint16)
    values[0, 0] = 65535
    image = load_image(_grey16(tmp_path / "a.png", values), None)
    assert image[5, 5, 0] == 128 and image[0, 0, 0] == 255


def test_float_images_in_unit_range_and_beyond():
    unit = Image.fromarray(np.full((20, 20), 0.5, dtype=np.float32))
    assert np.asarray(to_rgb8(unit))[0, 0, 0] == 128
    wide = np.zeros((20, 20), dtype=np.float32)
    wide[0, 0] = 1000.0
    out = np.asarray(to_rgb8(Image.fromarray(wide)))
    assert out[0, 0, 0] == 255 and out[1, 1, 0] == 0
    bad = np.zeros((20, 20), dtype=np.float32)
    bad[3, 3] = np.nan
    with pytest.raises(DataError, match="NaN"):
        to_rgb8(Image.fromarray(bad))


def test_exif_orientation_is_applied(tmp_path):
    array = np.zeros((20, 40, 3), dtype=np.uint8)  # 40 wide, 20 high
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rotated.png"
    image.save(path, exif=exif)
    loaded = load_image(path, None)
    assert loaded.shape == (40, 20, 3)  # shown upright: 20 wide, 40 high
    assert image_size(path) == (20, 40)
    assert loaded[:20].mean() > 200 and loaded[20:].mean() < 50  # white half now on top


def test_exif_after_the_pixels_of_a_png_is_found(tmp_path):
    # PNG allows the eXIf chunk after the image data, where only walking every chunk finds it
    # (image_size reads chunk headers, not pixels, before it asks Pillow to decode)
    image = Image.fromarray(np.zeros((20, 40, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 8
    first, plain = io.BytesIO(), io.BytesIO()
    image.save(first, format="PNG", exif=exif)
    image.save(plain, format="PNG")
    data = first.getvalue()
    at = data.index(b"eXIf") - 4
    chunk = data[at : at + 12 + int.from_bytes(data[at : at + 4], "big")]
    moved = data.replace(chunk, b"")
    end = moved.index(b"IEND") - 4
    (tmp_path / "late.png").write_bytes(moved[:end] + chunk + moved[end:])
    (tmp_path / "plain.png").write_bytes(plain.getvalue())
    assert image_size(tmp_path / "late.png") == (20, 40)
    assert load_image(tmp_path / "late.png", None).shape == (40, 20, 3)
    assert image_size(tmp_path / "plain.png") == (40, 20)


def test_tiny_image_is_refused_with_the_minimum(tmp_path):
    path = tmp_path / "dot.png"
    Image.new("RGB", (1, 1)).save(path)
    with pytest.raises(DataError, match=r"is 1x1 pixels; defectscope needs at least 16"):
        load_image(path, SIZE)


def test_pixel_limit_is_ours_and_raising_it_works(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 40)).save(path)
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(DataError, match="over the limit of 100: .*raise .*MAX_IMAGE_PIXELS"):
        load_image(path, None)
    # Pillow's own (process-wide) limit no longer fires first: ours decides
    monkeypatch.setattr(image_io, "MAX_IMAGE_PIXELS", 10_000)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)
    assert load_image(path, None).shape == (40, 40, 3)


def test_permission_denied_is_not_reported_as_missing(tmp_path, monkeypatch):
    path = tmp_path / "a.png"
    Image.new("RGB", (20, 20)).save(path)
    real_stat = Path.stat

    def stat(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kwargs)

    monkeypatch.setattr(Path, "stat", stat)
    with pytest.raises(DataError, match="permission denied; check the permissions"):
        load_image(path, None)
    with pytest.raises(DataError, match="not found"):
        load_image(tmp_path / "missing.png", None)


def test_unknown_category_message_is_plural_english(mvtec_root):
    from defectscope.data import discover

    with pytest.raises(DataError, match="valid categories: object, texture"):
        discover(mvtec_root, ["textur"])


def test_pickled_weights_get_our_advice_not_torchs(tmp_path):
    import torch

    from defectscope.backbones.networks import _read_state_dict

    path = tmp_path / "w.pth"
    torch.save({"args": argparse.Namespace(lr=1)}, path)
    with pytest.raises(BackboneError) as info:
        _read_state_dict(path)
    assert "never runs code" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_orphan_masks_and_empty_masks_get_notices(texture, tmp_path):
    from defectscope.engine.workflows.evaluation import evaluate

    from .conftest import small_padim

    copy = shutil.copytree(texture, tmp_path / "texture")
    gt = copy / "ground_truth" / "scratch"
    Image.new("L", (SIZE, SIZE)).save(gt / "999_mask.png")  # a mask with no test image
    first = sorted(gt.glob("000_mask.png"))[0]
    Image.new("L", (SIZE, SIZE)).save(first)  # an all-zero mask
    category = load_category(copy)
    assert any("1 masks in ground_truth/scratch/ have no test image" in n for n in category.notices)
    result = evaluate(small_padim().fit(copy), category)
    assert any("1 defective test images have an empty (all-zero) mask" in n for n in result.notices)


def test_unwritable_project_fails_before_fitting(texture, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code = main(["fit", "--data", str(texture), "--project", str(blocker / "runs"), *PADIM_ARGS])
    err = capsys.readouterr().err
    assert code == 2
    assert "cannot create the run folder" in err and "pass --project" in err
    assert "Traceback" not in err


def disk_full_at(monkeypatch, name: str) -> None:
    """Every file is written to a temporary file and renamed: the rename of ``name`` (and of
    every later file) fails as on a full disk."""
    import errno
    import os

    real = os.replace
    full = []

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name or full:
            full.append(dst)
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_failure_after_fit_keeps_the_model_and_says_where(texture, tmp_path, capsys, monkeypatch):
    disk_full_at(monkeypatch, "config.json")
    code = main(["fit", "--data", str(texture), "--project", str(tmp_path / "runs"), *PADIM_ARGS])
    err = capsys.readouterr().err
    model = tmp_path / "runs" / "fit" / "texture" / "model.safetensors"
    assert code == 2 and model.is_file()
    assert f"the fitted model is saved in {model}" in err


def test_failed_run_leaves_no_empty_folder(fitted, tmp_path, capsys):
    model = fitted.save(tmp_path / "m" / "model.safetensors")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    project = tmp_path / "runs"
    assert main(["predict", "--model", str(model), str(bad), "--project", str(project)]) == 2
    assert "unreadable or truncated" in capsys.readouterr().err
    assert not project.exists()


def test_interrupted_benchmark_keeps_a_readable_run(mvtec_root, tmp_path, monkeypatch, capsys):
    from defectscope.engine.workflows import benchmark as workflows

    real = workflows.fit_and_evaluate
    calls = []

    def fit_and_evaluate(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(workflows, "fit_and_evaluate", fit_and_evaluate)
    project = tmp_path / "runs"
    args = ["benchmark", "--data", str(mvtec_root), "--project", str(project), *PADIM_ARGS]
    assert main(args) == 130
    run = project / "benchmark" / "benchmark"
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "interrupted" and meta["completed"] == ["object (padim)"]
    assert main(["report", str(run)]) == 0
    assert "this run was interrupted" in (run / "report.html").read_text()

    calls.clear()
    calls.append(1)  # the next call (the first category) is interrupted
    assert main([*args, "--name", "early"]) == 130
    capsys.readouterr()
    assert main(["report", str(project / "benchmark" / "early")]) == 2
    assert "its run was interrupted before any category finished" in capsys.readouterr().err


def test_overlays_named_by_relative_path(fitted, texture, tmp_path):
    from defectscope.engine.workflows.predicting import predict_to_folder

    source = sorted((texture / "test" / "scratch").glob("*.png"))
    for folder, name, src in (("d1", "a", 0), ("d1", "a_2", 1), ("d2", "a", 2)):
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(source[src], tmp_path / folder / f"{name}.png")
    inputs = [tmp_path / "d1" / "a.png", tmp_path / "d1" / "a_2.png", tmp_path / "d2" / "a.png"]
    out = tmp_path / "out"
    out.mkdir()
    rows, _ = predict_to_folder(fitted, inputs, out)
    assert len(rows) == 3 and [r["index"] for r in rows] == [0, 1, 2]
    folder = out / "overlays"
    overlays = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png"))
    assert overlays == ["d1/a.png", "d1/a_2.png", "d2/a.png"]


def test_overlays_drawn_on_threads_are_those_drawn_one_by_one(fitted, texture, tmp_path):
    from defectscope.engine.workflows.predicting import predict_to_folder

    inputs = sorted((texture / "test").rglob("*.png"))
    written = {}
    for workers in (0, 3):
        out = tmp_path / f"w{workers}"
        out.mkdir()
        rows, _ = predict_to_folder(fitted, inputs, out, workers=workers)
        pictures = {p.relative_to(out): p.read_bytes() for p in out.rglob("*.png")}
        written[workers] = ([{k: r[k] for k in r if k != "path"} for r in rows], pictures)
    assert len(written[0][1]) == len(inputs) + 1  # the overlays and the contact sheet
    assert written[3] == written[0]


@pytest.mark.parametrize("order", ["rising", "falling", "ties", "random"])
@pytest.mark.parametrize("workers", [0, 3])
def test_contact_sheet_drawn_while_scoring_keeps_the_highest_scores(order, workers):
    """The sheet's pictures are kept as scores arrive: the final top (ties: the earlier image
    first, as a stable sort) and never more than the sheet's size held at once."""
    from types import SimpleNamespace

    from defectscope.engine.workflows.predicting import SHEET_SIZE, _Drawing

    n = 100
    scores = {
        "rising": np.arange(n, dtype=float),
        "falling": -np.arange(n, dtype=float),
        "ties": np.repeat([1.0, 3.0, 2.0, 3.0], n // 4),
        "random": np.random.default_rng(0).random(n),
    }[order]
    held = []

    def draw(i, p, keep):
        return {"i": i}, (np.full(1, i) if keep else None)

    drawing = _Drawing(draw, workers, sheet=True)
    for i, s in enumerate(scores):
        drawing.add(i, SimpleNamespace(score=float(s)))
        held.append(len(drawing.pictures))
    sheet = drawing.finish()
    drawing.close()
    expected = sorted(range(n), key=lambda i: -scores[i])[:SHEET_SIZE]
    assert [int(pic[0]) for pic in sheet] == expected
    assert max(held) <= SHEET_SIZE
    assert sorted(drawing.rows) == list(range(n))
    assert all(row["i"] == i for i, row in drawing.rows.items())


@pytest.mark.parametrize("broken", ["1b_broken.png", "0_broken.png"])  # last, then between
def test_an_unreadable_image_is_an_error_row_and_the_others_are_scored(
    fitted, texture, tmp_path, broken
):
    from defectscope.cli import main

    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((texture / "test" / "good").glob("*.png"))[:2]
    for i, src in enumerate(good):
        shutil.copy(src, folder / f"{i}.png")
    (folder / broken).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    model = fitted.save(tmp_path / "m.safetensors")
    argv = ["predict", "--model", str(model), str(folder), "--project", str(tmp_path), "-q"]
    assert main(argv) == 1  # errors: exit code 1, the run still written
    rows = list(csv.DictReader(open(tmp_path / "predict" / "predict" / "predictions.csv")))
    names = sorted(["0.png", "1.png", broken])
    assert [r["name"] for r in rows] == names
    at = names.index(broken)
    assert rows[at]["verdict"] == "error" and broken in rows[at]["error"]
    scored = [r for r in rows if r["name"] != broken]
    assert all(r["verdict"] in ("pass", "fail") and r["error"] == "" for r in scored)
    # the contact sheet of the scored images (its order once read the scored images by the
    # row's index, and an error row before the last image made that fail)
    assert (tmp_path / "predict" / "predict" / "most_anomalous.png").is_file()
    from defectscope.cluster.predict import COLUMNS

    assert tuple(rows[0]) == COLUMNS  # the Ray path writes the same columns
    meta = json.loads((tmp_path / "predict" / "predict" / "run.json").read_text())
    assert meta["errors"] == 1 and meta["images"] == 3
    data = json.loads((tmp_path / "predict" / "predict" / "predictions.json").read_text())
    assert data[at]["score"] is None


def test_links_and_wrong_weights_files_say_what_they_are(texture, tmp_path):
    from defectscope.backbones.networks import _read_state_dict

    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(DataError, match="is a symbolic link loop"):
        load_image(tmp_path / "a.png", 64)
    (tmp_path / "c.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(DataError, match="is a broken symbolic link"):
        load_image(tmp_path / "c.png", 64)
    text = tmp_path / "w.pth"
    text.write_text("hello")
    with pytest.raises(BackboneError, match="it is not a PyTorch file .* a text file"):
        _read_state_dict(text)


@pytest.mark.parametrize(
    ("verb", "full_at"),
    [
        ("fit", "model.safetensors"),
        ("predict", "predictions.csv"),
        ("predict", "000.png"),  # an overlay
        ("export", "model.onnx"),
        ("evaluate", "results.json"),
        ("calibrate", "model.safetensors"),
    ],
)
def test_a_full_disk_is_one_line_and_leaves_no_partial_file(
    verb, full_at, fitted, texture, tmp_path, capsys, monkeypatch
):
    model = fitted.save(tmp_path / "m" / "model.safetensors")
    before = model.read_bytes()
    project = ["--project", str(tmp_path / "runs")]
    argv = {
        "fit": ["fit", "--data", str(texture), *project, *PADIM_ARGS],
        "predict": ["predict", "--model", str(model), str(texture / "test" / "good"), *project],
        "export": ["export", "--model", str(model)],
        "evaluate": ["evaluate", "--model", str(model), "--data", str(texture), *project],
        "calibrate": ["calibrate", "--model", str(model), "--data", str(texture)],
    }[verb]
    disk_full_at(monkeypatch, full_at)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the disk is full; free space and run again" in err, err
    assert "Traceback" not in err
    left = [p.name for p in tmp_path.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert left == [], left
    assert not list(tmp_path.rglob(full_at + "*")) or full_at == "model.safetensors"
    assert model.read_bytes() == before  # the model given is never half-replaced


def test_a_consistent_but_absurd_threshold_is_refused(fitted, tmp_path, texture, capsys):
    """Every copy of the threshold edited alike (checksum recomputed): it still lies a million
    score spreads from the good scores, where no fit or calibration puts one."""
    import hashlib

    from .fuzz.mutate import join_safetensors, split_safetensors

    header, body = split_safetensors(fitted.save(tmp_path / "m.safetensors").read_bytes())
    record = json.loads(header["__metadata__"]["config"])
    fit_record = record["fitted"]
    absurd = fit_record["score_scale"]["good_median"] + 1e6 * fit_record["score_scale"]["spread"]
    fit_record["threshold"] = fit_record["threshold_source"]["threshold"] = absurd
    fit_record["threshold_source"]["operating_point"]["threshold"] = absurd
    text = json.dumps(record)
    header["__metadata__"].update(
        config=text, config_sha256=hashlib.sha256(text.encode()).hexdigest()
    )
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(join_safetensors(header, body))
    image = sorted((texture / "test" / "good").glob("*.png"))[0]
    assert main(["predict", "--model", str(edited), str(image), "--project", str(tmp_path)]) == 2
    assert "spreads from the median good score" in capsys.readouterr().err


def test_flags_are_never_abbreviated(texture, tmp_path, capsys):
    args = ["fit", "--data", str(texture), "--project", str(tmp_path), "--n-feature", "40"]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    assert "--n-feature: did you mean --n-features" in capsys.readouterr().err


def test_predict_names_a_link_loop_and_a_broken_link(fitted, tmp_path, capsys):
    model = fitted.save(tmp_path / "m" / "model.safetensors")
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    (tmp_path / "broken.png").symlink_to(tmp_path / "gone.png")
    for name, said in (("loop.png", "symbolic link loop"), ("broken.png", "broken symbolic link")):
        argv = ["predict", "--model", str(model), str(tmp_path / name), "--project", str(tmp_path)]
        assert main(argv) == 2
        assert said in capsys.readouterr().err


def test_temporary_files_of_killed_writers_are_removed_never_a_live_ones(fitted, tmp_path):
    import os
    import subprocess
    import sys
    import time

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], **_OUT)
    dead_pid = int(gone.stdout)  # that process has exited: its file is an orphan
    target = tmp_path / "model.safetensors"
    orphan = tmp_path / f".model.safetensors.{dead_pid}.abc123.tmp"
    live = tmp_path / f".model.safetensors.{os.getpid()}.def456.tmp"  # a writer still running
    other = tmp_path / f".other.png.{dead_pid}.x.tmp"  # another file's: not ours to judge
    legacy = tmp_path / ".model.safetensors.k3j2h1.tmp"  # an earlier release's, two days old
    recent = tmp_path / ".model.safetensors.q9w8e7.tmp"  # the same, a minute old: kept
    for path in (orphan, live, other, legacy, recent):
        path.write_bytes(b"half a model, as a kill -9 leaves it")
    os.utime(legacy, (time.time() - 2 * 86_400,) * 2)
    fitted.save(target)
    assert target.is_file() and not orphan.exists() and not legacy.exists()
    assert live.exists() and other.exists() and recent.exists()


_OUT = {"capture_output": True, "text": True, "check": True}


def test_the_kinds_the_long_fuzz_run_found(fitted, tmp_path):
    """Three kinds the 1,000-case run found: a TIFF missing its width tag (Pillow raises
    TypeError), a vanishing sigma, an integer too large for numpy in a fit record."""
    from defectscope import PaDiM
    from defectscope.engine.rules.operating import check_fit_info
    from defectscope.errors import ConfigError

    from .fuzz.mutate import flip_bits
    from .test_fuzz import IMAGES

    data, _ = flip_bits(IMAGES["TIFF"], np.random.default_rng(643))  # the case the run found
    (tmp_path / "x.tif").write_bytes(data)
    with pytest.raises(DataError, match="unreadable or truncated"):
        load_image(tmp_path / "x.tif", SIZE)
    with pytest.raises(Exception, match=r"sigma must be 0 \(no smoothing\) or in \[0.05, 1000\]"):
        PaDiM(sigma=1e-300).options()
    info = {**fitted.fit_info_, "score_scale": {"good_median": 1.0, "spread": 10**30}}
    with pytest.raises(ConfigError, match="score_scale"):
        check_fit_info(info)
