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


def test_test_images_sharing_a_stem_cannot_share_a_mask(tmp_path):
    root = make_category(
        tmp_path / "c", n_train=3, n_test_good=2, n_test_defect=2, size=32, defects=("hole",)
    )
    Image.open(root / "test" / "hole" / "000.png").save(root / "test" / "hole" / "000.jpg")
    with pytest.raises(DataError, match=r"c/test/hole: 000.jpg and 000.png share the stem '000'"):
        load_category(root)
    # the same stems among good images, or without masks, pair nothing: accepted
    Image.open(root / "test" / "good" / "000.png").save(root / "test" / "good" / "000.jpg")
    (root / "test" / "hole" / "000.jpg").unlink()
    assert len(load_category(root).test_samples) == 5


@pytest.mark.parametrize("spelling", ["Good", "GOOD"])
def test_good_is_good_in_any_case(tmp_path, spelling):
    root = make_category(
        tmp_path / "c", n_train=3, n_test_good=2, n_test_defect=2, size=32, defects=("hole",)
    )
    for split in ("train", "test"):
        (root / split / "good").rename(root / split / spelling)
    category = load_category(root)
    assert len(category.train_paths) == 3
    labels = sorted((s.defect_type, s.is_anomalous) for s in category.test_samples)
    assert labels == [("good", False)] * 2 + [("hole", True)] * 2
    assert discover(tmp_path) == [root]
    (root / "test" / "good").mkdir()  # two spellings side by side: which one is meant?
    with pytest.raises(DataError, match=r"holds both .* one folder of defect-free images"):
        load_category(root)


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


def _png16(path, values, significant=None):
    """A 16-bit PNG (grey or RGB) of ``values``, with an sBIT chunk if ``significant``."""
    import struct
    import zlib

    import png

    height, width = values.shape[:2]
    grey = values.ndim == 2
    rows = values.reshape(height, -1).tolist()
    with open(path, "wb") as handle:
        png.Writer(width, height, bitdepth=16, greyscale=grey).write(handle, rows)
    if significant:
        data = path.read_bytes()
        body = bytes([significant] * (1 if grey else 3))
        chunk = struct.pack(">I", len(body)) + b"sBIT" + body
        chunk += struct.pack(">I", zlib.crc32(b"sBIT" + body) & 0xFFFFFFFF)
        path.write_bytes(data[:33] + chunk + data[33:])  # right after the IHDR
    return path


def test_sixteen_bit_colour_pngs_are_decoded_at_full_depth(tmp_path):
    from defectscope.data.images import load_image, native_bits

    rng = np.random.default_rng(0)
    values = rng.integers(0, 4096, size=(40, 48, 3)).astype(np.uint16)  # a 12-bit camera
    path = _png16(tmp_path / "rgb16.png", values)
    image = load_image(path, None)
    assert native_bits(path) == 12
    expected = np.rint(values * (255 / 4095)).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)  # not Pillow's high byte (0..15)
    # sBIT: values scaled to the full 16 bits, 12 of them significant
    scaled = (values.astype(np.uint32) << 4 | values >> 8).astype(np.uint16)
    marked = _png16(tmp_path / "sbit.png", scaled, significant=12)
    assert native_bits(marked) == 12
    assert np.abs(load_image(marked, None).astype(int) - expected).max() <= 1


def test_bit_depth_is_decided_once_per_source(tmp_path):
    """Two frames of one part that differ in one pixel get the same scaling, hence almost the
    same pixels, once the source's depth is recorded (not each image's own maximum)."""
    from defectscope.data.images import load_image, source_bit_depth

    rng = np.random.default_rng(1)
    part = rng.integers(200, 900, size=(32, 32)).astype(np.uint16)
    a = part.copy()
    b = part.copy()
    b[0, 0] = 4000  # one hot pixel: on its own maximum, image b would be scaled 4x darker
    pa, pb = _png16(tmp_path / "a.png", a), _png16(tmp_path / "b.png", b)
    assert source_bit_depth([pa, pb]) == 12
    own_a, own_b = load_image(pa, None), load_image(pb, None)
    assert own_a.mean() > 3 * own_b.mean()  # what per-image scaling did
    same_a, same_b = load_image(pa, None, bits=12), load_image(pb, None, bits=12)
    assert np.abs(same_a.astype(int) - same_b.astype(int))[1:, 1:].max() == 0
    assert source_bit_depth([tmp_path / "missing.png"]) is None


def test_values_beyond_the_recorded_depth_are_noticed(tmp_path, caplog):
    from defectscope.data.images import load_image

    path = _png16(tmp_path / "hot.png", np.full((32, 32), 5000, dtype=np.uint16))
    with caplog.at_level("WARNING"):
        image = load_image(path, None, bits=12)
    assert image.max() == 255  # saturated
    assert "beyond the 12 bits recorded for its source" in caplog.text


def test_a_model_records_its_training_depth_and_applies_it(tmp_path):
    import defectscope

    from .conftest import small_padim

    rng = np.random.default_rng(2)
    train = tmp_path / "train"
    train.mkdir()
    base = rng.integers(1000, 3000, size=(64, 64)).astype(np.uint16)
    for i in range(6):
        noise = rng.integers(0, 200, size=base.shape).astype(np.uint16)
        _png16(train / f"{i}.png", base + noise)
    paths = sorted(train.glob("*.png"))
    model = small_padim(synthetic=16, illumination="none").fit(paths)
    assert model.fit_info_["bit_depth"] == 12
    fresh = base + rng.integers(0, 200, size=base.shape).astype(np.uint16)
    hot = fresh.copy()
    hot[0, 0] = 4095  # one hot pixel
    frame = _png16(tmp_path / "hot.png", hot)
    plain = _png16(tmp_path / "fresh.png", fresh)
    # scaled by the model's 12 bits, as its training images were: the same part, a similar
    # score; scaled by its own maximum (16 bits: 4095 fits 12, 4096 would not) it is darker
    scores = model.score([plain, frame]).scores
    assert scores[1] < 1.5 * scores[0]
    darker = load_image(frame, None, bits=16)
    assert model.score([darker]).scores[0] > 3 * scores[0]
    reloaded = defectscope.load(model.save(tmp_path / "m.safetensors"))
    assert reloaded.bit_depth == 12
    np.testing.assert_allclose(reloaded.score([frame]).scores, scores[1:], rtol=1e-4)
