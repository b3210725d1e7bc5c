import json
import shutil
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
    assert set(figures["texture (padim)"]) == {"roc", "pro", "histogram", "examples", "synthetic"}
    # no masks: no PRO curve, and the example grid has no ground-truth column
    assert set(figures["object (padim)"]) == {"roc", "histogram", "examples", "synthetic"}
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


def test_html_stands_alone_and_reflects_the_results(run):
    import base64
    import io

    page = (run / "report.html").read_text()
    parser = _Collector()
    parser.feed(page)
    assert not parser.stack
    assert parser.images  # every figure embedded: the page can be mailed alone
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).load()
    assert "http://" not in page and "https://" not in page and "<script" not in page
    results_table = page.split('<table class="results">')[1].split("</table>")[0]
    rows = json.loads((run / "results.json").read_text())["rows"]
    assert results_table.count("<tr") == len(rows) + 1  # header + one per category + mean
    assert "object: no ground-truth masks" in page
    assert "not ranked (n/a): object" in page  # no masks: no pixel F1, so no place in that list
    assert "defectscope benchmark --data" in page and "--model padim" in page  # the command
    payload = json.loads((run / "results.json").read_text())
    for result in payload["results"]:
        s = result["summary"]
        defective = s["caught"] + s["missed"]
        assert f"caught <b>{s['caught']} of {defective}</b> defective parts" in page
        assert sum(d["images"] for d in s["defect_types"]) == defective
        assert result["model"]["model_sha256"] in page
    assert "confusion matrix" in page and "per defect type" in page
    assert "ROC curves: how well the scores separate" in page  # captions in words
    from defectscope import __version__

    assert f"defectscope {__version__}" in page


def test_chance_warnings():
    from defectscope.report.html import chance_warnings

    row = {"category": "tire", "detector": "padim", "image_auroc": 0.55, "pixel_auroc": 0.45}
    warnings = chance_warnings(row)
    assert "image AUROC 0.550 is near chance" in warnings[0]
    assert "pixel AUROC 0.450 is below chance" in warnings[1]
    assert chance_warnings({**row, "image_auroc": 0.9, "pixel_auroc": None}) == []


def test_single_category_report_has_no_rankings(texture, tmp_path):
    project = tmp_path / "runs"
    args = ["benchmark", "--data", str(texture), "--project", str(project), *PADIM_ARGS]
    assert main(args) == 0
    page = (project / "benchmark" / "benchmark" / "report.html").read_text()
    assert ">Rankings</h2>" not in page and ">Summary</h2>" in page
    assert '<a href="#s1">Summary</a>' in page  # the table of contents


def test_report_verb_rebuilds(run, tmp_path):
    (run / "report.html").unlink()
    assert main(["report", str(run), "-q"]) == 0
    assert (run / "report.html").is_file()
    assert main(["report", str(tmp_path), "-q"]) == 2


@pytest.mark.slow
def test_html_renders_in_headless_chromium(run, tmp_path):
    """The page alone (copied away from its run folder) in Chromium at 1400 px: the results
    table is visible and fits, the figures load, the screenshot decodes."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    alone = tmp_path / "mailed.html"
    shutil.copy(run / "report.html", alone)
    shot = tmp_path / "report.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(alone.as_uri())
            table = page.locator("table.results")
            assert table.is_visible()
            box = table.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= 1400  # no overflow at 1400 px
            loaded = page.evaluate(
                "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
            )
            assert loaded
            page.screenshot(path=str(shot), full_page=False)
        finally:
            browser.close()
    with Image.open(shot) as image:
        assert image.size == (1400, 900)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # a rendered page, not a blank one


def test_picture_grids_are_placed_by_inches_and_saved_as_drawn(tmp_path):
    """The grids' panels sit where their inches say, none overlapping, inside the figure; an
    uncropped save writes exactly the pixels matplotlib's own save draws."""
    import numpy as np

    from defectscope.report.plots import DPI, _panel_grid, _save

    fig, axes = _panel_grid(3, 4, 1.5, 2.0, left=0.5, right=1.0, top=0.6, bottom=0.1, gap=0.1)
    width, height = fig.get_size_inches()
    assert (width, height) == pytest.approx(
        (0.5 + 4 * 1.5 + 3 * 0.1 + 1.0, 0.6 + 3 * 2.0 + 2 * 0.1 + 0.1)
    )
    boxes = [ax.get_position() for ax in axes.ravel()]
    for box in boxes:
        assert box.width * width == pytest.approx(1.5) and box.height * height == pytest.approx(2.0)
        assert box.x0 * width >= 0.5 - 1e-9 and box.x1 * width <= width - 1.0 + 1e-9
        assert box.y1 * height <= height - 0.6 + 1e-9 and box.y0 * height >= 0.1 - 1e-9
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert (
                a.x1 <= b.x0 + 1e-9
                or b.x1 <= a.x0 + 1e-9
                or a.y1 <= b.y0 + 1e-9
                or b.y1 <= a.y0 + 1e-9
            )
    rng = np.random.default_rng(0)
    for ax in axes.ravel():
        ax.imshow(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    axes[0, 0].set_title("a title")
    fig.suptitle("the grid")
    ours = _save(fig, tmp_path / "grid.png", crop=False)
    fig.savefig(tmp_path / "reference.png", dpi=DPI)
    with Image.open(ours) as image, Image.open(tmp_path / "reference.png") as reference:
        assert image.mode == "RGB" and image.size == (round(width * DPI), round(height * DPI))
        assert np.array_equal(np.asarray(image), np.asarray(reference.convert("RGB")))
