"""Discovering categories in the MVTec AD layout.

A category folder holds ``train/good/*`` (defect-free images), ``test/<defect>/*`` (``good`` for
defect-free ones) and, optionally, ``ground_truth/<defect>/<stem>_mask.png``. A *root* holds
several category folders. Test images are paired with their masks by file stem, never by
sorted position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from defectscope.data.images import is_image_file
from defectscope.errors import DataError, unknown_name

GOOD = "good"


@dataclass(frozen=True)
class TestSample:
    """One test image: its defect type (``good`` for defect-free), label and optional mask."""

    path: Path
    defect_type: str
    mask_path: Path | None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


@dataclass(frozen=True)
class Category:
    """One product category in MVTec layout, with what was found and what was skipped."""

    name: str
    root: Path
    train_paths: tuple[Path, ...]
    test_samples: tuple[TestSample, ...]
    notices: tuple[str, ...] = field(default=())

    @property
    def has_masks(self) -> bool:
        """Whether pixel metrics can be computed: every defective test image has a mask."""
        defective = [s for s in self.test_samples if s.is_anomalous]
        return bool(defective) and all(s.mask_path is not None for s in defective)

    @property
    def pixel_samples(self) -> tuple[TestSample, ...]:
        """Test samples usable for pixel metrics: good ones and defective ones with a mask."""
        return tuple(s for s in self.test_samples if not s.is_anomalous or s.mask_path is not None)


def _image_files(folder: Path, notices: list[str]) -> list[Path]:
    """Image files directly in ``folder``, sorted by name; anything else gets one notice."""
    files, skipped = [], []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_file() and is_image_file(path):
            files.append(path)
        else:
            skipped.append(path.name)
    if skipped:
        shown = ", ".join(skipped[:3]) + (
            f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        )
        notices.append(f"skipped {len(skipped)} non-image entries in {folder}: {shown}")
    return files


def is_category(folder: Path) -> bool:
    """Whether ``folder`` looks like one MVTec category (it has a ``train`` folder)."""
    return (folder / "train").is_dir()


def load_category(folder: str | Path, *, require_test: bool = False) -> Category:
    """Read one category folder.

    Args:
        folder: the category folder holding ``train/good`` and usually ``test`` and
            ``ground_truth``.
        require_test: raise when there is no ``test`` folder (evaluation needs it).

    Raises:
        DataError: ``train/good`` is missing or empty, ``test`` is missing when required, or
            a defect type has a ``ground_truth`` folder but an image's mask is missing.
    """
    folder = Path(folder)
    if folder.is_file():
        raise DataError(f"{folder} is a file; --data takes a category folder (MVTec layout)")
    if not folder.is_dir():
        raise DataError(f"category folder not found: {folder}")
    notices: list[str] = []
    train_dir = _good_folder(folder / "train")
    if not train_dir.is_dir():
        inside = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and _good_folder(p / "train").is_dir()
        )
        if inside:
            shown = ", ".join(inside[:8]) + (
                f" and {len(inside) - 8} more" if len(inside) > 8 else ""
            )
            raise DataError(
                f"{folder} is a root of {len(inside)} categories ({shown}), not a category: "
                f"give one of them (e.g. {folder / inside[0]}), or use `defectscope benchmark` "
                "(or fit) on the root"
            )
        raise DataError(
            f"{train_dir} not found: a category needs its defect-free training images in "
            "train/good/ (MVTec AD layout)"
        )
    train = _image_files(train_dir, notices)
    if not train:
        raise DataError(f"{train_dir} holds no images (.png, .jpg, ...); add defect-free images")

    samples: list[TestSample] = []
    test_dir = folder / "test"
    if not test_dir.is_dir():
        if require_test:
            raise DataError(
                f"{test_dir} not found: evaluation needs test/good/ and test/<defect>/ images"
            )
    else:
        gt_root = folder / "ground_truth"
        good_dir = _good_folder(test_dir)
        for defect_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            # `Good` or `GOOD` is the defect-free folder too, never a defect type
            defect = GOOD if defect_dir == good_dir else defect_dir.name
            images = _image_files(defect_dir, notices)
            gt_dir = gt_root / defect
            if defect != GOOD and gt_dir.is_dir():
                _refuse_shared_stems(folder.name, defect, images)
            if defect != GOOD and images and not gt_dir.is_dir():
                notices.append(
                    f"{folder.name}/{defect}: no ground_truth/{defect}/ folder; "
                    "evaluated at image level only (pixel metrics skipped for these images)"
                )
            used: set[Path] = set()
            for image in images:
                mask = None
                if defect != GOOD and gt_dir.is_dir():
                    mask = _find_mask(gt_dir, image)
                    used.add(mask)
                samples.append(TestSample(image, defect, mask))
            if defect != GOOD and gt_dir.is_dir():
                orphans = [
                    p.name
                    for p in sorted(gt_dir.iterdir())
                    if p.is_file() and is_image_file(p) and p not in used
                ]
                if orphans:
                    shown = ", ".join(orphans[:3]) + (
                        f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
                    )
                    notices.append(
                        f"{folder.name}/{defect}: {len(orphans)} masks in ground_truth/{defect}/ "
                        f"have no test image and are not used: {shown}"
                    )
        if require_test and not samples:
            raise DataError(f"{test_dir} holds no test images; add test/good/ and test/<defect>/")
    return Category(folder.name, folder, tuple(train), tuple(samples), tuple(notices))


def _good_folder(parent: Path) -> Path:
    """``parent/good``, matched without regard to case (``Good``, ``GOOD``); two spellings of
    it side by side are refused, since either could be meant."""
    if not parent.is_dir():
        return parent / GOOD
    found = sorted(p for p in parent.iterdir() if p.is_dir() and p.name.lower() == GOOD)
    if len(found) > 1:
        names = " and ".join(p.name for p in found)
        raise DataError(
            f"{parent} holds both {names}: one folder of defect-free images is expected; "
            "merge them into good/"
        )
    return found[0] if found else parent / GOOD


def _refuse_shared_stems(category: str, defect: str, images: list[Path]) -> None:
    """Masks are found by file stem, so two test images of one defect type with the same stem
    (``000.png`` and ``000.jpg``) would silently share one mask."""
    seen: dict[str, Path] = {}
    for image in images:
        other = seen.setdefault(image.stem, image)
        if other is not image:
            raise DataError(
                f"{category}/test/{defect}: {other.name} and {image.name} share the stem "
                f"{image.stem!r}, so ground_truth/{defect}/{image.stem}_mask.png cannot say "
                "which image it belongs to; rename one of them"
            )


def _find_mask(gt_dir: Path, image: Path) -> Path:
    """The mask of ``image`` in ``gt_dir`` by stem: ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    for name in (f"{image.stem}_mask", image.stem):
        for suffix in (".png", image.suffix, ".bmp", ".tif", ".tiff", ".jpg"):
            candidate = gt_dir / f"{name}{suffix}"
            if candidate.is_file():
                return candidate
    rel = Path(*image.parts[-3:])
    raise DataError(
        f"ground truth mask missing for {rel}: expected {gt_dir / (image.stem + '_mask.png')}; "
        f"add it, or remove {gt_dir} to evaluate this defect type at image level only"
    )


def discover(root: str | Path, categories: list[str] | None = None) -> list[Path]:
    """Category folders under ``root``: ``root`` itself if it is a category, else its children.

    Args:
        root: a category folder or a folder holding several.
        categories: keep only these names (in this order); unknown names raise with close matches.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}")
    if is_category(root):
        found = {root.name: root}
    else:
        found = {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and is_category(p)}
    if not found:
        raise DataError(
            f"no MVTec-layout category under {root}: expected {root}/train/good/ or "
            f"{root}/<category>/train/good/"
        )
    if categories is None:
        return list(found.values())
    missing = [c for c in categories if c not in found]
    if missing:
        raise DataError(unknown_name("category", missing[0], found) + f" (under {root})")
    return [found[c] for c in categories]
