import json
import shutil
import subprocess
from html.parser import HTMLParser

import pytest
from PIL import Image

from defectscope.cli import main

from .conftest import PADIM_ARGS


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.rows, self.stack = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag == "tr":
            self.rows += 1
        if tag not in ("img", "br", "meta"):
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"unbalanced </{tag}>"
        self.stack.pop()


@pytest.fixture(scope="module")
def run(mvtec_root, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    args = ["benchmark", "--data", str(mvtec_root), "--project", str(project), *PADIM_ARGS]
    assert main(args) == 0
    return project / "benchmark" / "benchmark"


def test_every_figure_is_written_and_decodes(run):
    figures = json.loads((run / "figures.json").read_text())
    assert set(figures["texture (padim)"]) == {"roc", "pro", "histogram", "examples"}
    # no masks: no PRO curve, and the example grid has no ground-truth column
    assert set(figures["object (padim)"]) == {"roc", "histogram", "examples"}
    for name in (
        "padim_rank_pixel_f1_best",
        "padim_rank_image_auroc",
        "padim_rank_image_f1_best",
        "fit_time",
        "evaluate_time",
    ):
        assert name in figures[""]
    for section in figures.values():
        for path in section.values():
            with Image.open(run / path) as image:
                image.load()
                assert image.size[0] > 100 and image.size[1] > 100


def test_example_grid_columns_follow_masks(run):
    with_gt = Image.open(run / "figures" / "padim_texture_examples.png").size
    without = Image.open(run / "figures" / "padim_object_examples.png").size
    assert with_gt[0] > without[0]  # one more column (ground truth) where masks exist


def test_html_parses_references_exist_and_reflects_table(run):
    page = (run / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    assert not parser.stack
    assert parser.images and all((run / src).is_file() for src in parser.images)
    assert "http://" not in page and "https://" not in page  # opens offline
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert parser.rows == len(rows) + 1  # header + one per category + mean
    assert "object: no ground-truth masks" in page
    assert "not ranked (n/a): object" in page  # no masks: no pixel F1, so no place in that list
    assert "defectscope benchmark --data" in page and "--model padim" in page  # the command


def test_report_verb_rebuilds(run, tmp_path):
    (run / "report.html").unlink()
    assert main(["report", str(run), "-q"]) == 0
    assert (run / "report.html").is_file()
    assert main(["report", str(tmp_path), "-q"]) == 2


def test_html_renders_in_headless_chromium(run, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)"
        )
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            f"--screenshot={shot}",
            "--window-size=1200,2000",
            (run / "report.html").as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(shot) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # a rendered page, not a blank one
