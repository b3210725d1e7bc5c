"""Video input to predict: every N-th frame, scored exactly as the same frame as an image."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from defectscope.cli import main

from .conftest import PADIM_ARGS

cv2 = pytest.importorskip("cv2", reason="the video extra: pip install 'defectscope[video]'")


@pytest.fixture(scope="module")
def model_run(texture, tmp_path_factory):
    project = tmp_path_factory.mktemp("video")
    assert main(["fit", "--data", str(texture), "--project", str(project), *PADIM_ARGS]) == 0
    return project / "fit" / "texture"


def write_video(path, frames):
    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()


def test_every_nth_frame_scores_like_the_image(model_run, texture, tmp_path):
    sources = sorted((texture / "test").rglob("*.png"))[:6]
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sources]
    video = tmp_path / "line.avi"
    write_video(video, frames)
    project = tmp_path / "runs"
    common = ["predict", "--model", str(model_run), "--project", str(project), "-q"]
    assert main([*common, str(video), "--every", "2"]) == 0
    run = project / "predict" / "predict"
    rows = list(csv.DictReader(open(run / "predictions.csv")))
    assert [int(r["frame"]) for r in rows] == [0, 2, 4]
    assert [float(r["time_s"]) for r in rows] == [0.0, 0.2, 0.4]
    assert all(r["path"] == str(video) for r in rows)
    assert rows[0]["name"] == "line.avi/frame_000000.png"

    # the same decoded frames, given as images, get the same scores
    capture = cv2.VideoCapture(str(video))
    decoded = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    images = tmp_path / "images"
    images.mkdir()
    for i in (0, 2, 4):
        Image.fromarray(decoded[i]).save(images / f"f{i}.png")
    assert main([*common, "--name", "images", str(images)]) == 0
    image_rows = list(csv.DictReader(open(project / "predict" / "images" / "predictions.csv")))
    assert [float(r["score"]) for r in image_rows] == [float(r["score"]) for r in rows]


def test_unreadable_video_is_one_clear_error(model_run, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video")
    code = main(["predict", "--model", str(model_run), str(bad), "--project", str(tmp_path)])
    assert code == 2
    assert "video" in capsys.readouterr().err


def test_truncated_video_says_which_frames_were_not_scored(model_run, texture, tmp_path, capsys):
    sources = sorted((texture / "test").rglob("*.png"))[:8]
    video = tmp_path / "cut.avi"
    write_video(video, [np.asarray(Image.open(p).convert("RGB")) for p in sources])
    data = video.read_bytes()
    video.write_bytes(data[: len(data) // 2])  # the recording broke off: the header says 8
    project = tmp_path / "runs"
    assert main(["predict", "--model", str(model_run), "--project", str(project), str(video)]) == 0
    out = capsys.readouterr()
    decoded = len(list(csv.DictReader(open(project / "predict" / "predict" / "predictions.csv"))))
    assert 0 < decoded < 8
    assert f"decoded {decoded} of the 8 frames its header declares" in out.out + out.err
    assert f"frames {decoded}-7 are not scored" in out.out + out.err
