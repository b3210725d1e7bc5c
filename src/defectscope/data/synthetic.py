"""A synthetic data set in MVTec AD layout, with injected defects and exact masks.

Used by the tests and by ``defectscope demo`` so that both run offline. Two kinds of category:

- ``texture``: a smooth random texture (like carpet or leather) that fills the image;
- ``object``: a textured disc on a plain background (like a bottle seen from above).

Defects are painted into otherwise good images, and the mask is exactly the painted pixels:
``scratch`` (a thin bright or dark line), ``stain`` (a coloured blob) and ``hole`` (a dark
ellipse).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

KINDS = ("texture", "object")
DEFECTS = ("scratch", "stain", "hole")


def _texture(rng: np.random.Generator, size: int, base: np.ndarray) -> np.ndarray:
    """Smooth coloured noise around ``base`` (RGB in 0..255), shape ``(size, size, 3)``."""
    noise = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 48)
    noise = noise / (noise.std() + 1e-8)
    stripes = np.sin(np.arange(size) / size * 2 * np.pi * 8)[None, :] * 0.6
    pattern = (noise + stripes)[..., None] * 18.0
    return np.clip(base[None, None, :] + pattern, 0, 255)


def _good(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if kind == "texture":
        return _texture(rng, size, np.array([150.0, 120.0, 90.0]))
    image = np.full((size, size, 3), 40.0)
    yy, xx = np.mgrid[:size, :size]
    centre = size / 2 + rng.normal(scale=size / 100, size=2)
    disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= (size * 0.38) ** 2
    image[disc] = _texture(rng, size, np.array([90.0, 150.0, 110.0]))[disc]
    return image


def _defect(
    kind: str, defect: str, image: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect; returns the new image and its boolean mask."""
    size = image.shape[0]
    yy, xx = np.mgrid[:size, :size]
    # Objects get their defects on the disc, where a real one would be.
    lo, hi = (0.15, 0.85) if kind == "texture" else (0.3, 0.7)
    cy, cx = rng.uniform(lo * size, hi * size, size=2)
    if defect == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.15, 0.3) * size
        along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
        across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
        mask = (np.abs(along) <= length / 2) & (np.abs(across) <= max(1.0, size / 100))
        colour = np.array([235.0, 235.0, 235.0])
    elif defect == "stain":
        radius = rng.uniform(0.05, 0.09) * size
        blob = ndimage.gaussian_filter(rng.normal(size=(size, size)), sigma=size / 40)
        blob = blob / (blob.std() + 1e-8)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2) <= (radius * (1 + 0.25 * blob)) ** 2
        colour = np.array([200.0, 40.0, 160.0])
    elif defect == "hole":
        ry, rx = rng.uniform(0.04, 0.08, size=2) * size
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        colour = np.array([5.0, 5.0, 5.0])
    else:
        raise ValueError(f"unknown defect {defect!r}; valid defects: {', '.join(DEFECTS)}")
    out = image.copy()
    out[mask] = colour
    return out, mask


def _write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(array, 0, 255).astype(np.uint8)).save(path)


def make_category(
    folder: str | Path,
    *,
    kind: str = "texture",
    n_train: int = 40,
    n_test_good: int = 10,
    n_test_defect: int = 6,
    defects: tuple[str, ...] = DEFECTS,
    size: int = 128,
    seed: int = 0,
    with_masks: bool = True,
) -> Path:
    """Write one synthetic category in MVTec layout and return its folder.

    Args:
        folder: the category folder to create (its name is the category name).
        kind: ``"texture"`` or ``"object"``.
        n_train: defect-free training images in ``train/good``.
        n_test_good: defect-free test images in ``test/good``.
        n_test_defect: images per defect type in ``test/<defect>``.
        defects: which defect types to inject.
        size: side of the square images in pixels.
        seed: seed of every random choice; the same seed writes identical files.
        with_masks: write ``ground_truth/<defect>/<stem>_mask.png``; without them the category
            can only be evaluated at image level.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    for i in range(n_train):
        _write(folder / "train" / "good" / f"{i:03d}.png", _good(kind, rng, size))
    for i in range(n_test_good):
        _write(folder / "test" / "good" / f"{i:03d}.png", _good(kind, rng, size))
    for defect in defects:
        for i in range(n_test_defect):
            image, mask = _defect(kind, defect, _good(kind, rng, size), rng)
            _write(folder / "test" / defect / f"{i:03d}.png", image)
            if with_masks:
                _write(folder / "ground_truth" / defect / f"{i:03d}_mask.png", mask * 255.0)
    return folder


def make_dataset(
    root: str | Path, *, size: int = 128, n_train: int = 40, seed: int = 0
) -> list[Path]:
    """Write a small two-category data set (``texture`` and ``object``) under ``root``."""
    root = Path(root)
    return [
        make_category(root / kind, kind=kind, size=size, n_train=n_train, seed=seed + i)
        for i, kind in enumerate(KINDS)
    ]
