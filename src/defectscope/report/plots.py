"""Figures of a run: ROC and PRO curves, score histograms, example grids, ranking bars.

Figures are drawn on ``matplotlib.figure.Figure`` objects (no pyplot global state) and saved
as PNG. Every heatmap of a category uses one colour scale, shown by a colour bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from defectscope.data.images import load_image
from defectscope.report.visualize import CMAP, mask_image, overlay, save_png
from defectscope.results import CategoryResult, pick_examples
from defectscope.verdict import fails

DPI = 100


def _save(fig: Figure, path: Path, crop: bool = True) -> Path:
    """``fig`` as a PNG at ``path``, cropped to what is drawn (the charts). A picture grid,
    whose panels and margins are placed to fill its figure, is saved uncropped: drawn once
    and its pixels written by :func:`~defectscope.report.visualize.save_png` (cropping draws a
    figure twice, and Pillow's encoder took as long as a drawing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if crop:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
        return path
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    fig.set_dpi(DPI)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())
    opaque = bool((pixels[..., 3] == 255).all())
    return save_png(pixels[..., :3] if opaque else pixels, path)


def color_scale(result: CategoryResult) -> tuple[float, float]:
    """The model's colour scale, fixed at fit time (the same in every figure, overlay and page);
    for models saved before it was recorded, the 1st percentile to the maximum of the example
    maps."""
    if result.colour_scale is not None:
        return result.colour_scale
    maps = np.stack(list(result.example_maps.values()))
    return float(np.percentile(maps[:, ::4, ::4], 1)), float(max(maps.max(), result.threshold))


def roc_figure(result: CategoryResult, path: Path) -> Path | None:
    """Image ROC and, where there are masks, pixel ROC (curves computed with the metrics)."""
    if "image_roc" not in result.curves:
        return None
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.plot(*result.curves["image_roc"], label=f"image (AUROC {result.metrics['image_auroc']:.3f})")
    if "pixel_roc" in result.curves:
        ax.plot(
            *result.curves["pixel_roc"], label=f"pixel (AUROC {result.metrics['pixel_auroc']:.3f})"
        )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"{result.category} ({result.detector}): ROC",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def pro_figure(result: CategoryResult, path: Path) -> Path | None:
    if "pro" not in result.curves:
        return None
    fpr, pro = result.curves["pro"]
    fig = Figure(figsize=(5, 4.5))
    ax = fig.add_subplot()
    ax.plot(fpr, pro, label=f"AUPRO@0.3 = {result.metrics['aupro_30']:.3f}")
    ax.axvline(0.3, color="grey", linestyle=":", linewidth=1)
    ax.set(
        xlabel="false positive rate (good pixels)",
        ylabel="per-region overlap",
        title=f"{result.category} ({result.detector}): PRO curve",
        xlim=(0, 1),
        ylim=(0, 1.01),
    )
    ax.legend(loc="lower right")
    return _save(fig, path)


def histogram_figure(
    good: np.ndarray,
    defective: np.ndarray,
    threshold: float | None,
    title: str,
    xlabel: str,
    path: Path,
) -> Path:
    """Histogram of scores of good vs defective images, with the pass/fail threshold."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    values = np.concatenate([good, defective])
    bins = np.linspace(values.min(), values.max(), 31) if values.size else 10
    ax.hist(good, bins=bins, alpha=0.6, label=f"good ({good.size})", color="tab:green")
    ax.hist(defective, bins=bins, alpha=0.6, label=f"defective ({defective.size})", color="tab:red")
    if threshold is not None and np.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.3g}")
    ax.set(xlabel=xlabel, ylabel="images", title=title)
    ax.legend()
    return _save(fig, path)


def score_histogram(result: CategoryResult, path: Path) -> Path:
    scores = np.array([r.score for r in result.images])
    labels = np.array([r.is_anomalous for r in result.images])
    return histogram_figure(
        scores[~labels],
        scores[labels],
        result.threshold,
        f"{result.category} ({result.detector}): image scores",
        "image anomaly score",
        path,
    )


def _as_shown(path: str, long_side: int = 320) -> np.ndarray:
    """An image at its own aspect ratio (long side ``long_side``): figures never squash a
    portrait part into the model's square input."""
    image = load_image(path, None)
    height, width = image.shape[:2]
    scale = long_side / max(height, width)
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    return load_image(path, size) if size != (height, width) else image


def _resized_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if mask.shape == shape:
        return mask
    picture = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(picture.resize((shape[1], shape[0]), Image.Resampling.NEAREST)) > 127


def _panel_grid(
    rows: int,
    columns: int,
    panel_width: float,
    panel_height: float,
    *,
    left: float = 0.55,
    right: float = 1.1,
    top: float = 0.62,
    bottom: float = 0.08,
    gap: float = 0.06,
) -> tuple[Figure, np.ndarray]:
    """A figure of ``rows`` x ``columns`` picture panels of a fixed size in inches, placed by
    arithmetic rather than a layout engine (which measured every panel's empty axes again on
    each draw: 1.6 s of tire's example grid), each panel framed, without ticks; margins in
    inches for the labels, titles and a colour bar."""
    width = left + columns * panel_width + (columns - 1) * gap + right
    height = top + rows * panel_height + (rows - 1) * gap + bottom
    fig = Figure(figsize=(width, height), dpi=DPI)
    axes = np.empty((rows, columns), dtype=object)
    for row in range(rows):
        for col in range(columns):
            x = left + col * (panel_width + gap)
            y = height - top - (row + 1) * panel_height - row * gap
            ax = fig.add_axes((x / width, y / height, panel_width / width, panel_height / height))
            ax.xaxis.set_visible(False)
            ax.yaxis.set_visible(False)
            axes[row, col] = ax
    return fig, axes


def example_grid(result: CategoryResult, path: Path, per_group: int = 3) -> Path | None:
    """Rows of image | ground truth | heatmap overlay | predicted mask for the most confident
    detections, the missed defects and the false alarms (no ground-truth column without masks),
    every panel at the image's own aspect ratio."""
    examples = [
        (group, i)
        for group, i in pick_examples(result.images, result.threshold, per_group)
        if i in result.example_maps
    ]
    if not examples:
        return None
    vmin, vmax = color_scale(result)
    with_gt = result.example_masks is not None
    columns = ["image", *(["ground truth"] if with_gt else []), "heatmap", "predicted mask"]
    first = _as_shown(result.images[examples[0][1]].path)
    aspect = first.shape[0] / first.shape[1]  # height / width
    fig, axes = _panel_grid(len(examples), len(columns), 2.3, 2.3 * aspect)
    for row, (group, i) in enumerate(examples):
        r = result.images[i]
        image = _as_shown(r.path)
        shape = image.shape[:2]
        amap = result.example_maps[i]
        panels = [image]
        if with_gt:
            panels.append(mask_image(_resized_mask(result.example_masks[i], shape)))
        panels += [
            overlay(image, amap, vmin, vmax),
            mask_image(_resized_mask(amap > result.threshold, shape)),
        ]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel)
            if row == 0:
                ax.set_title(columns[col], fontsize=10)
        axes[row, 0].text(
            -0.04,
            0.5,
            f"{group}\n{r.defect_type}\n{r.score:.3g}",
            transform=axes[row, 0].transAxes,
            rotation=90,
            ha="right",
            va="center",
            multialignment="center",
            fontsize=8,
        )
    # the colour bar beside the panels, vertically centred, at most 3.5 inches high
    width, height = fig.get_size_inches()
    panels_top, panels_bottom = axes[0, 0].get_position().y1, axes[-1, 0].get_position().y0
    bar = min(3.5 / height, panels_top - panels_bottom)
    middle = (panels_top + panels_bottom) / 2
    left = axes[0, -1].get_position().x1 + 0.15 / width
    cax = fig.add_axes((left, middle - bar / 2, 0.15 / width, bar))
    scale = ScalarMappable(Normalize(vmin, vmax), cmap=CMAP)
    fig.colorbar(scale, cax=cax, label="anomaly score (the model's fixed colour scale)")
    fig.suptitle(
        f"{result.category} ({result.detector}): threshold {result.threshold:.3g}",
        y=1 - 0.08 / height,
        va="top",
    )
    return _save(fig, path, crop=False)


def synthetic_grid(result: CategoryResult, path: Path, columns: int = 4) -> Path | None:
    """The synthetic defects the fit chose its threshold with: each image over its heatmap
    (the model's fixed colour scale), the defect's outline in the mask, titled with its kind
    and whether it fails at the threshold."""
    examples = result.synthetic_examples[: 2 * columns]
    if not examples:
        return None
    vmin, vmax = color_scale(result)
    height, width = examples[0][0].shape[:2]
    rows = 2 * -(-len(examples) // columns)
    fig, axes = _panel_grid(
        rows, columns, 2.2, 2.2 * height / width, left=0.1, right=0.1, top=0.5, gap=0.22
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (image, mask, amap, kind, score) in enumerate(examples):
        top, bottom = (
            axes[2 * (i // columns), i % columns],
            axes[2 * (i // columns) + 1, i % columns],
        )
        top.imshow(image)
        top.contour(mask, levels=[0.5], colors="yellow", linewidths=0.6)
        verdict = "FAIL" if fails(score, result.threshold) else "pass"
        top.set_title(f"{kind}: {score:.3g} {verdict}", fontsize=8)
        bottom.imshow(overlay(image, amap, vmin, vmax))
    fig.suptitle(
        f"{result.category} ({result.detector}): synthetic defects (outlined), scored by the "
        f"model of the other folds; threshold {result.threshold:.3g}",
        fontsize=9,
        y=1 - 0.06 / fig.get_size_inches()[1],
        va="top",
    )
    return _save(fig, path, crop=False)


def category_figures(result: CategoryResult, out: Path) -> dict[str, Path]:
    """Every per-category figure that the data allow, in ``out``; returns them by kind."""
    stem = f"{result.detector}_{result.category}"
    made = {
        "roc": roc_figure(result, out / f"{stem}_roc.png"),
        "pro": pro_figure(result, out / f"{stem}_pro.png"),
        "histogram": score_histogram(result, out / f"{stem}_histogram.png"),
        "examples": example_grid(result, out / f"{stem}_examples.png")
        if result.example_maps
        else None,
        "synthetic": synthetic_grid(result, out / f"{stem}_synthetic.png"),
    }
    if result.extra.get("history"):
        made["loss"] = loss_figure(result.extra["history"], result, out / f"{stem}_loss.png")
    return {k: v for k, v in made.items() if v is not None}


def loss_figure(history: dict[str, list[float]], result: CategoryResult, path: Path) -> Path:
    """Training and validation loss per epoch."""
    fig = Figure(figsize=(5, 3.5))
    ax = fig.add_subplot()
    epochs = np.arange(1, len(history["train"]) + 1)
    ax.plot(epochs, history["train"], label="train")
    ax.plot(epochs, history["val"], label="validation")
    ax.set(xlabel="epoch", ylabel="loss", title=f"{result.category} ({result.detector}): loss")
    ax.legend()
    return _save(fig, path)


def bar_figure(
    labels: Sequence[str], values: Sequence[float | None], title: str, xlabel: str, path: Path
) -> Path:
    """Horizontal bars, best first; missing values are drawn as 'n/a'."""
    fig = Figure(figsize=(6, 0.5 * len(labels) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    ax.barh(y, [v or 0.0 for v in values], color="tab:blue")
    for yi, v in zip(y, values):
        ax.text(v or 0.0, yi, f" {v:.3f}" if v is not None else " n/a", va="center", fontsize=9)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set(xlabel=xlabel, title=title)
    return _save(fig, path)


def benchmark_figures(results: Sequence[CategoryResult], out: Path) -> dict[str, Path]:
    """Ranking bars (pixel F1, image AUROC, image F1) and fit / inference time bars."""
    from defectscope.report.table import RANKED_BY, rankings

    made: dict[str, Path] = {}
    for detector, per_metric in rankings(results).items():
        for key, entries in per_metric.items():
            made[f"{detector}_rank_{key}"] = bar_figure(
                [e["category"] for e in entries],
                [e["value"] for e in entries],
                f"{detector}: categories ranked by {RANKED_BY[key]}",
                key,
                out / f"{detector}_rank_{key}.png",
            )
    labels = [f"{r.category} ({r.detector})" for r in results]
    made["fit_time"] = bar_figure(
        labels,
        [r.fit_seconds for r in results],
        "fit time per category",
        "seconds",
        out / "fit_time.png",
    )
    made["evaluate_time"] = bar_figure(
        labels,
        [r.evaluate_seconds for r in results],
        "evaluation (inference + metrics) time per category",
        "seconds",
        out / "evaluate_time.png",
    )
    return made
