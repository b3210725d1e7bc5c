"""Synthetic defects made from defect-free images only, with exact masks (seeded).

They let a fit judge itself before any labelled defect exists: the engine scores synthetic
defects made from each fold's training images with the model that did not see that fold, beside
the same images' out-of-fold good scores, and chooses the operating point from the two
(:mod:`defectscope.engine.rules.operating`).

Every generator takes a uint8 image ``(H, W, 3)`` (any size from :data:`MIN_SIDE` px, square or
not; grayscale arrives as three equal channels), another training image to borrow from, and a
``numpy.random.Generator``, and returns ``(image, mask)``: the defective image (uint8, same shape)
and a boolean mask ``(H, W)`` of the pixels it changed. Kinds (:data:`KINDS`):

- ``cutpaste``: a patch of another training image (or of this one, elsewhere), pasted under a
  random blob-shaped mask (CutPaste, Li et al. 2021);
- ``noise``: a Perlin-noise-shaped region blended with a texture or a flat colour (as DRAEM's
  anomaly source, Zavrtanik et al. 2021);
- ``scratch``: one or two thin curved lines, brighter or darker than the part;
- ``spot``: a few small round blobs, dark, bright or coloured;
- ``blur``: a local blur inside a blob;
- ``brightness``: a local change of brightness and contrast inside a blob.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

#: smallest image side synthetic defects are made on: below it a defect covers the whole part
MIN_SIDE = 32
#: the kinds of synthetic defect, in the order :func:`make_defects` cycles through them
KINDS = ("cutpaste", "noise", "scratch", "spot", "blur", "brightness")
#: how strongly a defect is painted: its change from the good image is scaled by a factor
#: drawn uniformly from this range (1: as generated)
STRENGTH = (0.2, 1.0)
#: a defect must change at least this fraction of its mask's pixels' values by 8 grey levels,
#: or it is drawn again (an invisible defect would teach the operating point nothing)
MIN_VISIBLE = 0.3


def check_size(shape: tuple[int, ...]) -> None:
    """ValueError unless an ``(H, W, ...)`` image is large enough for synthetic defects."""
    if min(shape[:2]) < MIN_SIDE:
        raise ValueError(
            f"synthetic defects need images of at least {MIN_SIDE} px on each side, got "
            f"{shape[1]}x{shape[0]} (width x height); use a larger --image-size"
        )


def perlin(
    shape: tuple[int, int],
    cells: tuple[int, int],
    rng: np.random.Generator,
    window: tuple[slice, slice] = (slice(None), slice(None)),
) -> np.ndarray:
    """2-D gradient (Perlin) noise of ``shape`` with ``cells`` lattice cells per axis, in
    [-1, 1] (a 2-D Perlin noise of unit gradients lies within +-sqrt(2)/2, scaled here by
    sqrt(2)): random unit gradients at the lattice points, blended with the quintic fade.
    ``window``: the rows and columns to compute (the same values as those of the whole field,
    which is all that is drawn from ``rng``)."""
    height, width = shape
    cy, cx = max(1, cells[0]), max(1, cells[1])
    angles = rng.uniform(0, 2 * np.pi, size=(cy + 1, cx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    y = np.linspace(0, cy, height, endpoint=False)[window[0]]
    x = np.linspace(0, cx, width, endpoint=False)[window[1]]
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # rows, then columns: two gathers from the small lattice, the same values as one
        # gather by both indices (which is 3-4x slower)
        g = grads[yi + dy][:, xi + dx]
        return g[..., 0] * (yf - dy) + g[..., 1] * (xf - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(xf), fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (top * (1 - v) + bottom * v) * np.sqrt(2)


def _centre(shape: tuple[int, int], rng: np.random.Generator) -> tuple[float, float]:
    """A defect centre in the middle 70% of the image, where parts usually are."""
    return rng.uniform(0.15, 0.85) * shape[0], rng.uniform(0.15, 0.85) * shape[1]


def blob_mask(
    shape: tuple[int, int], rng: np.random.Generator, scale: tuple[float, float] = (0.05, 0.15)
) -> np.ndarray:
    """A random blob: an ellipse of radii ``scale`` x the shorter side, its edge bent by noise."""
    height, width = shape
    side = min(shape)
    cy, cx = _centre(shape, rng)
    ry, rx = rng.uniform(*scale, size=2) * side
    angle = rng.uniform(0, np.pi)
    # the wobble is at most 0.3, so the blob lies inside the ellipse grown by 1.3: only the box
    # around that is computed (a few per cent of the image), pixel for pixel as the whole
    reach_y = 1.3 * np.hypot(rx * np.sin(angle), ry * np.cos(angle)) + 2
    reach_x = 1.3 * np.hypot(rx * np.cos(angle), ry * np.sin(angle)) + 2
    rows = slice(max(0, int(cy - reach_y)), min(height, int(cy + reach_y) + 1))
    cols = slice(max(0, int(cx - reach_x)), min(width, int(cx + reach_x) + 1))
    yy, xx = np.mgrid[rows, cols]
    dy, dx = yy - cy, xx - cx
    a = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
    b = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
    cells = (max(2, height // 16), max(2, width // 16))
    wobble = 0.3 * perlin(shape, cells, rng, (rows, cols))
    mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = a * a + b * b <= (1 + wobble) ** 2
    if not mask.any():  # a blob smaller than a pixel: its centre pixel
        mask[int(cy), int(cx)] = True
    return mask


def cutpaste(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """A blob of ``other`` (taken at a random place) pasted into ``image``."""
    mask = blob_mask(image.shape[:2], rng, (0.06, 0.16))
    ys, xs = np.nonzero(mask)
    h, w = image.shape[:2]
    dy = rng.integers(-ys.min(), h - ys.max())
    dx = rng.integers(-xs.min(), w - xs.max())
    out = image.copy()
    source = other if rng.random() < 0.7 else image
    out[ys, xs] = source[ys + dy, xs + dx]
    if rng.random() < 0.5:  # a rotated or mirrored piece breaks the texture's direction too
        piece = source[ys.min() + dy : ys.max() + dy + 1, xs.min() + dx : xs.max() + dx + 1]
        piece = piece[::-1, ::-1] if piece.shape[0] != piece.shape[1] else np.rot90(piece)
        out[ys, xs] = piece[ys - ys.min(), xs - xs.min()]
    return out, mask


def noise(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """A Perlin-shaped region blended with another image's texture or a flat colour."""
    h, w = image.shape[:2]
    for _ in range(8):
        scale = 2 ** rng.integers(1, 4)
        field = perlin((h, w), (scale, max(1, round(scale * w / h))), rng)
        mask = field > rng.uniform(0.35, 0.55)
        if 0.002 * h * w <= mask.sum() <= 0.2 * h * w:
            break
    else:
        mask = blob_mask((h, w), rng)
    if rng.random() < 0.5:
        fill = np.roll(other, (rng.integers(h), rng.integers(w)), axis=(0, 1)).astype(np.float32)
    else:
        fill = np.broadcast_to(rng.uniform(0, 255, size=3), image.shape).astype(np.float32)
    alpha = rng.uniform(0.5, 1.0)
    out = image.astype(np.float32)
    out[mask] = (1 - alpha) * out[mask] + alpha * fill[mask]
    return _to_uint8(out), mask


def scratch(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """One or two thin, slightly curved lines, much brighter or darker than the part."""
    h, w = image.shape[:2]
    side = min(h, w)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 3)):
        cy, cx = _centre((h, w), rng)
        length = rng.uniform(0.15, 0.4) * side
        angle = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.3, 0.3)
        t = np.linspace(-0.5, 0.5, max(8, int(length * 2)))
        ys = cy + t * length * np.sin(angle) + bend * length * (t * t - 0.25) * np.cos(angle)
        xs = cx + t * length * np.cos(angle) - bend * length * (t * t - 0.25) * np.sin(angle)
        keep = (ys >= 0) & (ys < h) & (xs >= 0) & (xs < w)
        mask[ys[keep].astype(int), xs[keep].astype(int)] = True
    width = max(1, round(side / 160))
    if width > 1:
        mask = ndimage.binary_dilation(mask, iterations=width - 1)
    out = image.astype(np.float32)
    level = out[mask].mean() if mask.any() else 128.0
    out[mask] = 255.0 if level < 128 else rng.uniform(0, 40)
    return _to_uint8(out), mask


def spot(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """A few small round blobs: dark, bright or coloured."""
    shape = image.shape[:2]
    mask = np.zeros(shape, dtype=bool)
    for _ in range(rng.integers(1, 4)):
        mask |= blob_mask(shape, rng, (0.015, 0.05))
    out = image.astype(np.float32)
    choice = rng.integers(3)
    colour = (
        np.zeros(3)
        if choice == 0
        else np.full(3, 255.0)
        if choice == 1
        else rng.uniform(0, 255, size=3)
    )
    out[mask] = 0.15 * out[mask] + 0.85 * colour
    return _to_uint8(out), mask


def blur(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """The part blurred (or smeared) inside a blob."""
    mask = blob_mask(image.shape[:2], rng, (0.06, 0.16))
    sigma = rng.uniform(2.0, 5.0) * min(image.shape[:2]) / 256
    # filtered around the blob only: the kernel's reach (4 sigma, scipy's truncation) beyond
    # it, or the image's edge, where the reflection is then the whole image's
    ys, xs = np.nonzero(mask)
    reach = int(4.0 * sigma + 0.5) + 1
    rows = slice(max(0, ys.min() - reach), ys.max() + 1 + reach)
    cols = slice(max(0, xs.min() - reach), xs.max() + 1 + reach)
    box = image[rows, cols].astype(np.float32)
    smooth = ndimage.gaussian_filter(box, sigma=(sigma, sigma, 0))
    out = image.copy()
    inside = mask[rows, cols]
    out[rows, cols][inside] = _to_uint8(smooth)[inside]
    return out, mask


def brightness(image, other, rng) -> tuple[np.ndarray, np.ndarray]:
    """A local change of brightness and contrast inside a blob."""
    mask = blob_mask(image.shape[:2], rng, (0.05, 0.14))
    out = image.astype(np.float32)
    gain = rng.choice([rng.uniform(0.3, 0.7), rng.uniform(1.4, 2.0)])
    shift = rng.uniform(-40, 40)
    out[mask] = out[mask] * gain + shift
    return _to_uint8(out), mask


GENERATORS: dict[str, Callable] = {
    "cutpaste": cutpaste,
    "noise": noise,
    "scratch": scratch,
    "spot": spot,
    "blur": blur,
    "brightness": brightness,
}


def _to_uint8(array: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(array), 0, 255).astype(np.uint8)


def make_defect(
    image: np.ndarray, other: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic defect of ``kind`` in uint8 ``image (H, W, 3)``; ``other``: a training
    image of the same shape to borrow texture from. Returns ``(image, mask)``; a defect that
    changed too little is drawn again (up to 8 times)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic defect {kind!r}; valid kinds: {', '.join(KINDS)}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if other.shape != image.shape:
        raise ValueError(f"other image shape {other.shape} differs from {image.shape}")
    check_size(image.shape)
    strength = rng.uniform(*STRENGTH)
    for _ in range(8):
        drawn, mask = GENERATORS[kind](image, other, rng)
        # everything below happens in the mask's box: outside the mask the image is kept
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if len(ys) else None
        if box is None:
            strength = min(1.0, strength * 1.5)
            continue
        # graded: real defects run from barely visible to obvious, and a threshold chosen
        # against obvious ones only would sit at the top of the good scores
        base = image[box].astype(np.float32)
        painted = _to_uint8(base + strength * (drawn[box].astype(np.float32) - base))
        changed = np.abs(painted.astype(np.int16) - image[box].astype(np.int16)).max(axis=2) >= 8
        if changed[mask[box]].mean() >= MIN_VISIBLE:
            break
        strength = min(1.0, strength * 1.5)
    out, kept = image.copy(), np.zeros(mask.shape, dtype=bool)
    if box is not None:
        kept[box] = mask[box] & changed
        out[box][kept[box]] = painted[kept[box]]
    return out, kept


def make_defects(
    images: np.ndarray, count: int, seed: int, kinds: tuple[str, ...] = KINDS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``count`` synthetic defects from uint8 ``images (N, H, W, 3)`` (N >= 1), cycling through
    ``kinds``: each is made from image ``sources[i]``, borrowing from another image where there
    is one. Returns ``(defective (count, H, W, 3) uint8, masks (count, H, W) bool, sources
    (count,) int, kinds)``. The same seed and images give the same defects."""
    if len(images) == 0:
        raise ValueError("synthetic defects need at least one training image")
    check_size(images.shape[1:])
    rng = np.random.default_rng(seed)
    n = len(images)
    sources = np.arange(count) % n
    rng.shuffle(sources)
    out = np.empty((count, *images.shape[1:]), dtype=np.uint8)
    masks = np.empty((count, *images.shape[1:3]), dtype=bool)
    names = []
    for i, source in enumerate(sources):
        kind = kinds[i % len(kinds)]
        other = images[(source + 1 + rng.integers(max(1, n - 1))) % n] if n > 1 else images[0]
        out[i], masks[i] = make_defect(images[source], other, kind, rng)
        names.append(kind)
    return out, masks, sources, names
