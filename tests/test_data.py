import numpy as np
import pytest
from PIL import Image

from defectscope.data import discover, load_category, load_image, load_mask
from defectscope.data.synthetic import make_category
from defectscope.errors import DataError


def test_category_pairs_masks_by_stem(texture):
    category = load_category(texture)
    defective = [s for s in category.test_samples if s.is_anomalous]
    assert defective and category.has_masks
    for sample in defective:
        assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
        assert sample.mask_path.parent.name == sample.defect_type


def test_pairing_does_not_depend_on_sorted_position(tmp_path):
    root = make_category(
        tmp_path / "c", n_train=3, n_test_good=1, n_test_defect=3, size=32, defects=("hole",)
    )
    # Remove image 001 but keep its mask: a positional pairing would shift every later mask.
    (root / "test" / "hole" / "001.png").unlink()
    category = load_category(root)
    pairs = {s.path.stem: s.mask_path.stem for s in category.test_samples if s.is_anomalous}
    assert pairs == {"000": "000_mask", "002": "002_mask"}


def test_missing_ground_truth_is_image_level_with_notice(mvtec_root):
    category = load_category(mvtec_root / "object")
    assert not category.has_masks
    assert any("no ground_truth/" in n and "image level only" in n for n in category.notices)


def test_missing_mask_names_file(tmp_path):
    root = make_category(
        tmp_path / "c", n_train=3, n_test_good=1, n_test_defect=2, size=32, defects=("hole",)
    )
    (root / "ground_truth" / "hole" / "001_mask.png").unlink()
    with pytest.raises(DataError, match=r"ground truth mask missing for .*hole/001.png: expected"):
        load_category(root)


def test_missing_or_empty_train(tmp_path):
    (tmp_path / "c" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="train/good not found"):
        load_category(tmp_path / "c")
    (tmp_path / "c" / "train" / "good").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        load_category(tmp_path / "c")


def test_non_image_files_are_skipped_with_notice(tmp_path):
    root = make_category(tmp_path / "c", n_train=3, n_test_good=1, n_test_defect=1, size=32)
    (root / "train" / "good" / "notes.txt").write_text("x")
    category = load_category(root)
    assert len(category.train_paths) == 3
    assert any("notes.txt" in n for n in category.notices)


def test_truncated_image(tmp_path):
    path = tmp_path / "bad.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 100).save(path)
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"bad.png is (unreadable or truncated|not an image)"):
        load_image(path, 32)


def test_not_an_image(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello")
    with pytest.raises(DataError, match="fake.png is not an image PIL can read"):
        load_image(path, 32)


def test_decompression_bomb(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((100, 100), np.uint8)).save(path)
    monkeypatch.setattr("defectscope.data.images.MAX_IMAGE_PIXELS", 5000)
    with pytest.raises(DataError, match="decompression bomb"):
        load_image(path, 32)


def test_grayscale_and_non_square_become_rgb_square(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((30, 50), 77, np.uint8)).save(path)
    image = load_image(path, 40)
    assert image.shape == (40, 40, 3) and image.dtype == np.uint8
    assert (image == 77).all()


def test_mask_checks(tmp_path):
    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(image)
    good = np.zeros((20, 30), np.uint8)
    good[5:10, 5:10] = 255
    Image.fromarray(good).save(tmp_path / "m.png")
    mask = load_mask(tmp_path / "m.png", 10, image_path=image)
    assert mask.dtype == bool and mask.shape == (10, 10) and mask.any()

    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"small.png is 10x10 but its image .* is 30x20"):
        load_mask(tmp_path / "small.png", 10, image_path=image)

    grey = good.copy()
    grey[0, 0] = 128
    Image.fromarray(grey).save(tmp_path / "grey.png")
    with pytest.raises(DataError, match="not binary: found values 0, 128, 255"):
        load_mask(tmp_path / "grey.png", 10)


def test_discover_root_and_category(mvtec_root, texture):
    assert [p.name for p in discover(mvtec_root)] == ["object", "texture"]
    assert discover(texture) == [texture]
    with pytest.raises(DataError, match="unknown category 'textur'; did you mean 'texture'"):
        discover(mvtec_root, ["textur"])
    with pytest.raises(DataError, match="no MVTec-layout category"):
        discover(texture / "test")
