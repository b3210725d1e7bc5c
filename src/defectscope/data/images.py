"""Reading images and masks from disk into arrays of a fixed size."""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from defectscope.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})

# A 512x512 inspection image has 0.26 MP; a line-scan camera may give 100 MP. Anything beyond this
# is far more likely a decompression bomb or a wrong file than a real photograph.
MAX_IMAGE_PIXELS = 178_956_970

#: images with a side shorter than this are refused: the feature maps have a stride of 8 to 16
#: pixels, so a smaller image holds less than one feature cell of real content
MIN_IMAGE_SIDE = 16

#: bit depths a high-bit-depth camera writes into a 16- or 32-bit container
_BIT_DEPTHS = (8, 10, 12, 14, 16, 24, 32)
_EXIF_ORIENTATION = 0x0112


def _is_file(path: Path) -> bool:
    """``path.is_file()`` that answers False, not PermissionError, for a folder it cannot see."""
    try:
        return path.is_file()
    except OSError:
        return False


def unreadable(path: Path, what: str) -> DataError:
    """The error for a path that cannot be opened: missing, or not allowed (they differ)."""
    try:
        path.stat()
    except PermissionError:
        pass  # a folder on the way cannot be searched
    except OSError as exc:
        if path.is_symlink():
            import errno

            if exc.errno == errno.ELOOP:
                return DataError(f"{what} {path} is a symbolic link loop; point it at a file")
            return DataError(f"{what} {path} is a broken symbolic link (to {os.readlink(path)})")
        return DataError(f"{what} not found: {path}")
    else:
        if path.is_dir():
            return DataError(f"{what} {path} is a folder, not a file")
    return DataError(
        f"cannot read {what} {path}: permission denied; check the permissions of the file "
        "and of its folders"
    )


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has a suffix that defectscope reads as an image (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def folder_images(folder: Path) -> tuple[list[Path], list[Path], str | None]:
    """The images under ``folder`` (recursively, sorted), the other files found, and a notice.

    A category folder in MVTec layout (``train/`` and ``test/`` inside) gives its ``test/``
    images only: its training images and ``ground_truth`` masks are not parts to judge.
    """
    notice = None
    if (folder / "test").is_dir() and (
        (folder / "train").is_dir() or (folder / "ground_truth").is_dir()
    ):
        notice = (
            f"{folder} is a category folder: scoring its test/ images only (not train/ or "
            "ground_truth/)"
        )
        folder = folder / "test"
    found = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in found if is_image_file(p)]
    return images, [p for p in found if not is_image_file(p)], notice


def _open(path: Path | io.BytesIO, what: str, name: str | None = None) -> Image.Image:
    """Open and fully decode an image (a file, or bytes in memory named ``name``), turning every
    PIL failure into a :class:`DataError`."""
    if isinstance(path, Path) and not _is_file(path):
        raise unreadable(path, what)
    source, path = path, (path if isinstance(path, Path) else name or "upload")
    # Pillow has its own process-wide limit that would fire before ours; lift it to ours so that
    # raising MAX_IMAGE_PIXELS is enough (it only ever goes up, so threads do not race).
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
            png16 = _png16(image, source)
            if png16 is not None:
                image.info[PNG16] = png16  # kept through load and the EXIF transpose
            width, height = image.size
            frames = getattr(image, "n_frames", 1)
            if frames != 1:
                raise DataError(
                    f"{what} {path} holds {frames} images (pages or frames); defectscope scores "
                    "one image per file: save each page as its own file"
                )
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(
                    f"{what} {path} is {width}x{height} pixels, over the limit of "
                    f"{MAX_IMAGE_PIXELS:,}: this looks like a decompression bomb; resize the "
                    "image or raise defectscope.data.images.MAX_IMAGE_PIXELS if it is genuine"
                )
            image.load()
    except DataError:
        raise
    except PermissionError as exc:
        raise unreadable(path, what) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(
            f"{what} {path} looks like a decompression bomb ({exc}); resize the image, or raise "
            "defectscope.data.images.MAX_IMAGE_PIXELS if it is genuine"
        ) from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{what} {path} is not an image PIL can read; remove it or convert it to PNG"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises (TypeError and
        # KeyError for TIFF tags that went missing, too), the file is damaged
        raise DataError(
            f"{what} {path} is unreadable or truncated ({exc}); re-export or remove it"
        ) from exc
    try:
        oriented = ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block is a broken file
        raise DataError(
            f"{what} {path} has an unreadable EXIF block ({exc}); re-export it"
        ) from exc
    return image if oriented is None else oriented


#: the first eight bytes of every PNG file
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunks(file) -> Iterator[tuple[bytes, int]]:
    """``(type, data length)`` of each chunk of the PNG in the open binary ``file``, read from
    its start, with ``file`` at the chunk's data when each is yielded; nothing if ``file`` is not
    a PNG. Only the headers are read: a chunk's data is skipped unless the caller reads it."""
    file.seek(0)
    if file.read(8) != PNG_SIGNATURE:
        return
    while len(head := file.read(8)) == 8:
        length = int.from_bytes(head[:4], "big")
        data_at = file.tell()
        yield head[4:], length
        file.seek(data_at + length + 4)  # past the data and its CRC


def _png_without_exif(file) -> bool:
    """Whether the open binary ``file`` is a PNG with no eXIf chunk, found by walking its chunk
    headers (Pillow decodes the whole image to look for one after the pixel data)."""
    for kind, _ in _png_chunks(file):
        if kind == b"eXIf":
            return False
        if kind == b"IEND":
            return True
    return False  # not a PNG, or truncated: let the decoder report it


def _swaps_sides(image: Image.Image) -> bool:
    """Whether the EXIF orientation of ``image`` turns it by 90 degrees (5, 6, 7, 8)."""
    try:
        return image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8)
    except Exception:  # noqa: BLE001 - unreadable EXIF: _open reports it when decoding
        return False


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as shown (EXIF orientation applied), without decoding."""
    path = Path(path)
    if not _is_file(path):
        raise unreadable(path, "image")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if image.format == "PNG":
                with path.open("rb") as file:
                    if _png_without_exif(file):
                        return width, height
            return (height, width) if _swaps_sides(image) else (width, height)
    except Exception as exc:  # noqa: BLE001 - whatever a decoder raises, the file is damaged
        raise DataError(f"image {path} is unreadable ({exc}); re-export or remove it") from exc


def _png_header(data: bytes) -> tuple[int, int, int | None] | None:
    """``(bit depth, colour type, significant bits or None)`` of a PNG's first bytes (its IHDR
    and, where present, sBIT chunk); None if ``data`` is not a PNG."""
    depth = colour = significant = None
    file = io.BytesIO(data)
    for kind, length in _png_chunks(file):
        if kind == b"IHDR":
            body = file.read(length)
            if len(body) >= 10:
                depth, colour = body[8], body[9]
        elif kind == b"sBIT":
            body = file.read(length)
            if body:
                significant = max(body)
        elif kind in (b"IDAT", b"IEND"):
            break
    return None if depth is None else (depth, colour, significant)


def _head(source: Path | io.BytesIO, size: int = 1 << 16) -> bytes:
    if isinstance(source, io.BytesIO):
        return source.getvalue()[:size]
    with open(source, "rb") as handle:
        return handle.read(size)


#: key of :func:`_png16`'s answer in a decoded image's ``info``
PNG16 = "defectscope_png16"


def _png16(image: Image.Image, source: Path | io.BytesIO) -> tuple[int, int | None] | None:
    """``(colour type, significant bits or None)`` of a 16-bit PNG opened but not yet decoded
    (Pillow's raw mode says the depth: no file is read again for any other image); None
    otherwise."""
    if image.format != "PNG" or not any(";16" in str(tile[3]) for tile in image.tile):
        return None
    header = _png_header(_head(source))
    return None if header is None else (header[1], header[2])


def native_values(image: Image.Image, source: Path | io.BytesIO | None) -> np.ndarray | None:
    """The integer pixel values of a high-bit-depth image at full depth, ``(H, W)`` or
    ``(H, W, 3)``; None for 8-bit (and float) images. Pillow reads 16-bit colour PNGs as 8-bit
    (their high byte: a 12-bit camera's 0..4095 becomes 0..15), so those are decoded with pypng."""
    if image.mode.startswith("I"):
        return np.clip(np.asarray(image).astype(np.int64), 0, None)
    png16 = image.info.get(PNG16)
    if source is None or png16 is None or png16[0] not in (2, 6):
        return None
    import png  # pypng: 16-bit colour PNGs only

    data = source.getvalue() if isinstance(source, io.BytesIO) else Path(source).read_bytes()
    width, height, rows, info = png.Reader(bytes=data).asDirect()
    values = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    values = values.reshape(height, width, info["planes"])[..., :3].astype(np.int64)
    if image.size != (width, height) or info["planes"] < 3:
        raise DataError(
            "a 16-bit colour PNG turned by its EXIF orientation is not supported at full "
            "depth: save it upright"
        )
    return values


def depth_of(values: np.ndarray) -> int:
    """The bit depth of integer pixel values: the smallest of 8, 10, 12, 14, 16, 24 or 32 bits
    that holds their largest value."""
    top = int(values.max()) if values.size else 0
    return next((b for b in _BIT_DEPTHS if top < 2**b), 32)


def native_bits(path: str | Path) -> int:
    """The bit depth of an image file: 8 for 8-bit images (from the header alone); for 16- and
    32-bit ones the PNG's sBIT where present, else what their values need."""
    path = Path(path)
    with Image.open(path) as image:
        png16 = _png16(image, path)
        if png16 is not None and png16[1]:
            return int(png16[1])
        if not image.mode.startswith("I") and (png16 is None or png16[0] not in (2, 6)):
            return 8
        image.info[PNG16] = png16
        image.load()
        values = native_values(image, path)
    return 8 if values is None else depth_of(values)


def source_bit_depth(items) -> int | None:
    """The bit depth of a source of images (a model's training images): the largest of their
    :func:`native_bits` where any has more than 8 bits, else None (8-bit images need none).
    Arrays are 8-bit by contract."""
    depths = []
    for item in items:
        if isinstance(item, (str, Path)):
            try:
                depths.append(native_bits(item))
            except Exception:  # noqa: BLE001 - decoding the file says what is wrong with it
                continue
    deepest = max(depths, default=8)
    return deepest if deepest > 8 else None


def to_rgb8(
    image: Image.Image, bits: int | None = None, native: np.ndarray | None = None
) -> Image.Image:
    """Any image as 8-bit RGB, scaling high-bit-depth images by the range they really use.

    Pillow's own conversion saturates 16-bit grey at 255, turning a 12-bit camera's image white.
    Integer images of more than 8 bits (``I;16``, ``I``, 16-bit colour PNGs given as ``native``
    values) are scaled by ``bits`` (the depth recorded for the source: a model's training
    images, or the PNG's sBIT), else by the smallest of 8, 10, 12, 14, 16, 24 or 32 bits that
    holds their largest value (a 12-bit camera's 0..4095 becomes 0..255). Values above the
    depth saturate. Float images (``F``) with values in [0, 1] are scaled by 255; other float
    images by their own minimum and maximum. Palette, grey, CMYK and alpha images convert as
    usual.
    """
    if native is None and image.mode.startswith("I"):
        native = np.clip(np.asarray(image).astype(np.int64), 0, None)
    if native is not None:
        depth = bits or depth_of(native)
        scaled = native.astype(np.float64) * (255.0 / (2**depth - 1))
        out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        if out.ndim == 2:
            out = np.repeat(out[..., None], 3, axis=2)
        return Image.fromarray(np.ascontiguousarray(out))
    if image.mode == "F":
        values = np.asarray(image).astype(np.float64)
        if not np.isfinite(values).all():
            raise DataError("image holds NaN or infinite pixel values")
        low, high = float(values.min()), float(values.max())
        if low >= 0.0 and high <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - low) * (255.0 / max(high - low, 1e-12))
        grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


class DecodedImages:
    """Full-size decodes of images being scored, kept for one more use (``predict`` draws each
    overlay on the image its scoring decoded, instead of decoding the file again: 6 ms of a
    tire image's 25 ms overlay). Bounded by ``budget`` bytes: an image that would pass it is
    not kept, and its user decodes it again. Thread-safe (the loader's threads put, the
    drawing threads take)."""

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.size = 0
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def put(self, path: str | Path, array: np.ndarray) -> None:
        with self._lock:
            key = os.fspath(path)
            if key not in self._arrays and self.size + array.nbytes <= self.budget:
                self._arrays[key] = array
                self.size += array.nbytes

    def take(self, path: str | Path | None) -> np.ndarray | None:
        """The kept decode of ``path`` (removed from the store), or None."""
        if path is None:
            return None
        with self._lock:
            array = self._arrays.pop(os.fspath(path), None)
            if array is not None:
                self.size -= array.nbytes
            return array


#: where :func:`load_image` keeps the full-size decodes of what it resizes, while a
#: :func:`keeping_decoded` block runs
_kept: DecodedImages | None = None
_kept_lock = threading.Lock()
#: bytes of full-size decodes kept at most (tire's images: 590 kB each)
KEEP_BYTES = 64 << 20


@contextlib.contextmanager
def keeping_decoded(budget: int | None = None) -> Iterator[DecodedImages]:
    """While the block runs, every 8-bit image that :func:`load_image` decodes and resizes is
    also kept at full size (as ``load_image(path, None)`` gives it) in the store yielded, for
    its one :meth:`~DecodedImages.take`; an image nobody takes stays until the block ends, so
    the caller takes (or drops) each image it scores. Blocks that overlap (threads) share the
    first one's store. ``budget``: bytes kept at most (default :data:`KEEP_BYTES`)."""
    global _kept
    with _kept_lock:
        if _kept is not None:
            store, mine = _kept, False
        else:
            store, mine = DecodedImages(KEEP_BYTES if budget is None else budget), True
        _kept = store
    try:
        yield store
    finally:
        if mine:
            with _kept_lock:
                _kept = None


def load_image(
    path: str | Path, size: int | tuple[int, int] | None, bits: int | None = None
) -> np.ndarray:
    """Read an image as RGB ``uint8`` of shape ``(H, W, 3)``, resized bilinearly to ``size``.

    Grayscale, palette and RGBA images become 3-channel RGB; 16- and 32-bit images are scaled to
    8 bits by :func:`to_rgb8` (by ``bits``, the source's recorded depth, where given); the EXIF
    orientation is applied. ``size`` is an int for a square output, ``(height, width)``, or None
    to keep the original size.

    Raises:
        DataError: the file is missing, not readable, not an image, truncated, over
            :data:`MAX_IMAGE_PIXELS`, or smaller than :data:`MIN_IMAGE_SIDE` on a side.
    """
    store = _kept if size is not None and bits is None else None
    keep = None if store is None else functools.partial(store.put, path)
    path = Path(path)
    return _to_array(_open(path, "image"), path, size, bits, path, keep)


def _to_array(
    image: Image.Image, path, size, bits: int | None = None, source=None, keep=None
) -> np.ndarray:
    if min(image.size) < MIN_IMAGE_SIDE:
        raise DataError(
            f"image {path} is {image.size[0]}x{image.size[1]} pixels; defectscope needs at least "
            f"{MIN_IMAGE_SIDE} pixels per side (its feature maps have a stride of 8 to 16 pixels)"
        )
    try:
        native = native_values(image, source)
        if native is not None:
            significant = (image.info.get(PNG16) or (None, None))[1]
            if significant and significant < 16 and int(native.max()) >= 2**significant:
                # sBIT as written by some cameras: the values are shifted to the top bits
                native = native >> (16 - significant)
            depth = int(significant) if significant else bits
            if depth and native.size and int(native.max()) >= 2**depth:
                log.warning(
                    "image %s has values up to %d, beyond the %d bits recorded for its source: "
                    "they saturate (was it taken with another camera set-up?)",
                    path,
                    int(native.max()),
                    depth,
                )
            image = to_rgb8(image, depth, native)
        else:
            image = to_rgb8(image)
    except DataError as exc:
        raise DataError(f"image {path}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a broken 16-bit stream is a broken file
        raise DataError(f"image {path} is unreadable at full depth ({exc})") from exc
    if size is not None:
        if keep is not None:  # the full-size image, as this function gives it with size None
            keep(np.asarray(image, dtype=np.uint8))
        height, width = (size, size) if isinstance(size, int) else size
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def decode_image(
    data: bytes, size: int | tuple[int, int] | None, name: str = "upload", bits: int | None = None
):
    """:func:`load_image` for encoded bytes in memory (an upload): the same checks and
    conversions; ``name`` appears in the messages."""
    if not data:
        raise DataError(f"image {name} is empty (0 bytes)")
    buffer = io.BytesIO(data)
    return _to_array(_open(buffer, "image", name), name, size, bits, buffer)


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
