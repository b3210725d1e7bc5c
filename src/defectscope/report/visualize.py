"""Heatmap colouring and overlays as plain arrays (no pyplot state), written as PNG."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from defectscope.atomic import write_bytes
from defectscope.data.images import PNG_SIGNATURE
from defectscope.verdict import fails

#: the colour map of every heatmap (matplotlib's name, for the figures' colour bars)
CMAP = "jet"

# The "jet" colour map as piecewise-linear red, green and blue ramps (the standard definition),
# sampled into a 256-entry table: overlays need no matplotlib, so `predict` and the server start
# without importing it.
_JET = {
    "red": ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    "green": ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    "blue": ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
}
_LUT = np.stack(
    [
        np.interp(np.linspace(0, 1, 256), [x for x, _ in ramp], [y for _, y in ramp])
        for ramp in _JET.values()
    ],
    axis=1,
)
_LUT = (_LUT * 255).astype(np.uint8)


def colorize(anomaly_map: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """``(H, W)`` scores -> ``(H, W, 3)`` uint8 colours on the fixed scale ``[vmin, vmax]``."""
    span = max(vmax - vmin, 1e-12)
    # in place, in float32: a few passes over one buffer (a full-size overlay's map is large)
    level = np.subtract(anomaly_map, np.float32(vmin), dtype=np.float32)
    level *= np.float32(255.0 / span)
    np.clip(level, 0.0, 255.0, out=level)
    np.rint(level, out=level)
    return np.take(_LUT, level.astype(np.uint8), axis=0)  # 3-4x faster than _LUT[index]


def overlay(
    image: np.ndarray, anomaly_map: np.ndarray, vmin: float, vmax: float, alpha: float = 0.45
) -> np.ndarray:
    """Blend the coloured map over ``image (H, W, 3) uint8``; the map is resized to the image."""
    if anomaly_map.shape != image.shape[:2]:
        resized = Image.fromarray(anomaly_map.astype(np.float32), mode="F").resize(
            (image.shape[1], image.shape[0]), Image.Resampling.BILINEAR
        )
        anomaly_map = np.asarray(resized)
    heat = colorize(anomaly_map, vmin, vmax)
    blend = np.multiply(image, np.float32(1 - alpha), dtype=np.float32)
    blend += np.multiply(heat, np.float32(alpha), dtype=np.float32)
    return blend.astype(np.uint8)


def mask_image(mask: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool -> white-on-black ``(H, W, 3)`` uint8."""
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=2)


#: PNG colour type of a uint8 array by its channels: grey, grey + alpha, RGB, RGBA
_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(array: np.ndarray) -> bytes:
    """An 8-bit PNG of ``array``: ``(H, W)`` grey or ``(H, W, C)`` with 1-4 channels, uint8.
    Every row is "up"-filtered (its difference from the row above, mod 256) and compressed by
    zlib at level 1 with run-length matching: 2.5x faster than Pillow at level 1 (whose choice
    of a filter per row costs as much as its compression) for files of the same size or smaller
    (overlays: 259 against 288 KiB), and zlib releases the GIL, so threads write in parallel.
    Other arrays go to Pillow as before."""
    grey = array.ndim == 2
    channels = 1 if grey else (array.shape[2] if array.ndim == 3 else 0)
    if array.dtype != np.uint8 or channels not in _COLOUR_TYPES or 0 in array.shape[:2]:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()
    height, width = array.shape[:2]
    rows = np.ascontiguousarray(array).reshape(height, width * channels)
    filtered = np.empty((height, 1 + width * channels), dtype=np.uint8)
    filtered[:, 0] = 2  # filter type "up"
    filtered[0, 1:] = rows[0]  # the row above the first is zeros
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8: wraps mod 256, as PNG's
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, zlib.Z_RLE)
    data = packer.compress(filtered) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, _COLOUR_TYPES[channels], 0, 0, 0)
    return b"".join(
        (
            PNG_SIGNATURE,
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", data),
            _png_chunk(b"IEND", b""),
        )
    )


def save_png(array: np.ndarray, path: Path) -> Path:
    """Write ``array`` as a PNG (:func:`png_bytes`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_bytes(path, png_bytes(array))


def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def annotated_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    scale: tuple[float, float],
    *,
    score: float,
    normalized: float | None,
    threshold: float,
    threshold_on_map: bool = True,
    regions: list | tuple = (),
    label: str | None = None,
) -> np.ndarray:
    """An overlay an operator can read alone: the heatmap on the model's fixed colour scale,
    the regions boxed, a banner with verdict, score and threshold, and a colour bar with the
    threshold marked.

    Args:
        image: ``(H, W, 3)`` uint8 at its original size.
        anomaly_map: ``(h, w)`` scores (resized to the image).
        scale: ``(low, high)`` of the colour scale (the model's, fixed at fit time).
        regions: :class:`~defectscope.regions.Region` boxes in the image's coordinates.
        threshold_on_map: whether the threshold is on the map's scale (image score = map maximum)
            and can be marked on the colour bar.
        label: a line under the banner (e.g. the image's relative path).
    """
    from PIL import ImageDraw

    height, width = image.shape[:2]
    body = Image.fromarray(overlay(image, anomaly_map, *scale))
    draw = ImageDraw.Draw(body)
    line = max(2, round(min(width, height) / 200))
    for r in regions:
        box = (r.x0, r.y0, max(r.x0, r.x1 - 1), max(r.y0, r.y1 - 1))
        draw.rectangle(box, outline=(0, 0, 0), width=line + 2)
        draw.rectangle(box, outline=(255, 255, 255), width=line)

    text_size = max(12, min(28, width // 28))
    font = _font(text_size)
    banner = round(text_size * 1.8) * (2 if label else 1)
    bar_width = max(70, text_size * 5)
    canvas = Image.new("RGB", (width + bar_width, height + banner), (255, 255, 255))
    canvas.paste(body, (0, banner))
    draw = ImageDraw.Draw(canvas)
    failed = fails(score, threshold)
    draw.rectangle(
        (0, 0, width + bar_width, banner - 1), fill=(200, 30, 30) if failed else (30, 130, 60)
    )
    text = f"{'FAIL' if failed else 'pass'}   score {score:.4g}"
    if normalized is not None:
        text += f" ({normalized:.2f})"
    text += f"   threshold {threshold:.4g}"
    pad = round(text_size * 0.4)
    draw.text((pad, pad), text, fill=(255, 255, 255), font=font)
    if label:
        draw.text(
            (pad, banner // 2 + pad), label, fill=(255, 255, 255), font=_font(text_size * 4 // 5)
        )

    # colour bar: high at the top
    low, high = scale
    top, bottom = banner + text_size, banner + height - text_size
    left = width + pad
    bar_w = max(12, bar_width // 5)
    span = max(bottom - top, 1)
    ramp = np.linspace(1.0, 0.0, span)[:, None].repeat(bar_w, axis=1)
    canvas.paste(Image.fromarray(colorize(ramp, 0.0, 1.0)), (left, top))
    small = _font(max(10, text_size * 3 // 4))
    ticks = [(high, top), ((low + high) / 2, top + span // 2), (low, bottom)]
    if threshold_on_map and np.isfinite(threshold):
        frac = float(np.clip((threshold - low) / max(high - low, 1e-12), 0.0, 1.0))
        y = round(bottom - frac * span)
        draw.line((left - 4, y, left + bar_w + 4, y), fill=(0, 0, 0), width=3)
        draw.line((left - 4, y, left + bar_w + 4, y), fill=(255, 255, 255), width=1)
        arrow = "" if low <= threshold <= high else ("^" if threshold > high else "v")
        draw.text(
            (left + bar_w + 3, y),
            f"T{arrow} {threshold:.3g}",
            fill=(200, 0, 0),
            font=small,
            anchor="lm",
        )
        ticks = [(v, ty) for v, ty in ticks if abs(ty - y) > text_size]
    for value, ty in ticks:
        draw.text((left + bar_w + 3, ty), f"{value:.3g}", fill=(0, 0, 0), font=small, anchor="lm")
    return np.asarray(canvas)


def tile_sheet(
    pictures: list[np.ndarray], title: str, columns: int = 4, width: int = 300
) -> np.ndarray:
    """Pictures side by side in rows of ``columns``, each scaled to ``width`` pixels wide, under
    a title line (white background)."""
    from PIL import ImageDraw

    thumbs = []
    for picture in pictures:
        image = Image.fromarray(picture)
        height = max(1, round(image.height * width / image.width))
        thumbs.append(image.resize((width, height), Image.Resampling.BILINEAR))
    columns = max(1, min(columns, len(thumbs)))
    rows = -(-len(thumbs) // columns)
    cell_h = max(t.height for t in thumbs)
    pad, head = 6, 30
    sheet = Image.new(
        "RGB", (columns * (width + pad) + pad, head + rows * (cell_h + pad) + pad), "white"
    )
    ImageDraw.Draw(sheet).text((pad, 6), title, fill=(0, 0, 0), font=_font(16))
    for i, thumb in enumerate(thumbs):
        r, c = divmod(i, columns)
        sheet.paste(thumb, (pad + c * (width + pad), head + r * (cell_h + pad)))
    return np.asarray(sheet)


def verdict_overlay(
    image: np.ndarray,
    anomaly_map: np.ndarray,
    scale: tuple[float, float],
    row: dict,
    regions: list,
    on_map: bool,
    label: str,
) -> np.ndarray:
    """The annotated overlay of one verdict row (:func:`defectscope.verdict.verdict_row`):
    drawn from the row, so that picture and table always agree."""
    return annotated_overlay(
        image,
        anomaly_map,
        scale,
        score=row["score"],
        normalized=row["normalized_score"],
        threshold=row["threshold"],
        threshold_on_map=on_map,
        regions=regions,
        label=label,
    )
