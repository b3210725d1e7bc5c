"""Reading images and masks from disk into arrays of a fixed size."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from defectscope.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# A 512x512 inspection image has 0.26 MP; a line-scan camera may give 100 MP. Anything beyond this
# is far more likely a decompression bomb or a wrong file than a real photograph.
MAX_IMAGE_PIXELS = 178_956_970


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has a suffix that defectscope reads as an image (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode an image, turning every PIL failure into a :class:`DataError`."""
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{what} {path} is {width}x{height} pixels, over the limit of "
                    f"{MAX_IMAGE_PIXELS:,}: this looks like a decompression bomb; resize the "
                    "image or raise defectscope.data.images.MAX_IMAGE_PIXELS if it is genuine"
                )
            image.load()
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{what} {path} looks like a decompression bomb ({exc}); resize the image first"
        ) from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{what} {path} is not an image PIL can read; remove it or convert it to PNG"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"{what} {path} is unreadable or truncated ({exc}); re-export or remove it"
        ) from exc
    return image


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image without decoding its pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"image {path} is unreadable ({exc}); re-export or remove it") from exc


def load_image(path: str | Path, size: int | tuple[int, int] | None) -> np.ndarray:
    """Read an image as RGB ``uint8`` of shape ``(H, W, 3)``, resized bilinearly to ``size``.

    Grayscale, palette and RGBA images become 3-channel RGB. ``size`` is an int for a square
    output, ``(height, width)``, or None to keep the original size.
    """
    image = _open(Path(path), "image").convert("RGB")
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def load_mask(
    path: str | Path, size: int | tuple[int, int] | None, image_path: str | Path | None = None
) -> np.ndarray:
    """Read a binary ground-truth mask as ``bool`` of shape ``(H, W)`` (nearest-neighbour resize).

    Args:
        path: the mask file; any value above zero marks a defect pixel.
        size: output size as for :func:`load_image`, or None to keep it.
        image_path: the image the mask belongs to; when given, the two must have the same size.

    Raises:
        DataError: the mask is unreadable, has more than two values (not binary), or differs in
            size from its image.
    """
    path = Path(path)
    mask = _open(path, "mask")
    if image_path is not None:
        expected = image_size(image_path)
        if mask.size != expected:
            raise DataError(
                f"mask {path} is {mask.size[0]}x{mask.size[1]} but its image {image_path} is "
                f"{expected[0]}x{expected[1]}; masks must have the size of their image"
            )
    values = np.asarray(mask.convert("L"))
    unique = np.unique(values)
    if len(unique) > 2 or (len(unique) == 2 and unique[0] != 0):
        shown = ", ".join(str(v) for v in unique[:6]) + (", ..." if len(unique) > 6 else "")
        raise DataError(
            f"mask {path} is not binary: found values {shown}; expected 0 for good pixels and "
            "one other value (e.g. 255) for defect pixels"
        )
    binary = Image.fromarray(((values > 0) * 255).astype(np.uint8))
    if size is not None:
        height, width = (size, size) if isinstance(size, int) else size
        if binary.size != (width, height):
            binary = binary.resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(binary) > 0
