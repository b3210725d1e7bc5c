"""Fuzz tests: mutated model files and images raise only defectscope's own exceptions, and a
model that loads never turns NaN into a verdict. Seeded (``derandomize``) and bounded to a few
seconds; the long run (1,000+ cases each) is ``tests/fuzz/run.py``."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import defectscope
from defectscope.data.images import load_image
from defectscope.errors import DefectscopeError

from .conftest import SIZE
from .fuzz.fields import edit_export_field, edit_model_field, predict_outcome
from .fuzz.mutate import finite, image_mutations, model_mutations

FAST = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def model_bytes(fitted, tmp_path_factory) -> bytes:
    return fitted.save(tmp_path_factory.mktemp("fuzz") / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def sample(texture) -> Path:
    return sorted((texture / "test" / "scratch").glob("*.png"))[0]


def check_model(data: bytes, image: Path) -> str:
    """Load and score a (mutated) model file: 'ok' or the defectscope error class."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(data)
        try:
            model = defectscope.load(path, progress=False)
            [prediction] = model.predict([image])
        except DefectscopeError as exc:
            return type(exc).__name__
    assert finite([model.threshold_, prediction.score]), "a non-finite value became a verdict"
    assert prediction.is_anomalous == (prediction.score > model.threshold_)
    return "ok"


@FAST
@given(seed=st.integers(0, 2**32 - 1), which=st.integers(0, 5))
def test_mutated_model_files_raise_only_our_errors(model_bytes, sample, seed, which):
    mutation = model_mutations(model_bytes)[which]
    data, _ = mutation(model_bytes, np.random.default_rng(seed))
    check_model(data, sample)


def encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "BMP", "TIFF")}


def check_image(data: bytes, suffix: str) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"part{suffix}"
        path.write_bytes(data)
        try:
            array = load_image(path, SIZE)
        except DefectscopeError as exc:
            return type(exc).__name__
    assert array.dtype == np.uint8 and array.shape == (SIZE, SIZE, 3)
    return "ok"


@FAST
@given(seed=st.integers(0, 2**32 - 1), fmt=st.sampled_from(sorted(IMAGES)), which=st.integers(0, 3))
def test_mutated_images_raise_only_our_errors(seed, fmt, which):
    data, _ = image_mutations()[which](IMAGES[fmt], np.random.default_rng(seed))
    check_image(data, "." + fmt.lower().replace("jpeg", "jpg"))


def test_edited_header_is_caught_by_its_checksum(model_bytes, sample):
    """A threshold changed by hand (or by a flipped digit) is not silently used."""
    import json

    from .fuzz.mutate import join_safetensors, split_safetensors

    header, body = split_safetensors(model_bytes)
    config = json.loads(header["__metadata__"]["config"])
    config["fitted"]["threshold"] = config["fitted"]["threshold"] * 2
    header["__metadata__"]["config"] = json.dumps(config)
    assert check_model(join_safetensors(header, body), sample) == "ModelFileError"


def defective_part(good: Path, out: Path) -> Path:
    """A good part with a large dark patch: any sound model of the texture rejects it."""
    pixels = np.asarray(Image.open(good).convert("RGB")).copy()
    h, w = pixels.shape[:2]
    pixels[h // 4 : h // 2, w // 4 : w // 2] = 0
    Image.fromarray(pixels).save(out)
    return out


def field_parts(texture: Path, folder: Path) -> dict[str, Path]:
    good = sorted((texture / "test" / "good").glob("*.png"))[0]
    return {"good": good, "defective": defective_part(good, folder / "defective.png")}


@pytest.fixture(scope="module")
def parts(texture, tmp_path_factory) -> dict[str, Path]:
    return field_parts(texture, tmp_path_factory.mktemp("parts"))


@pytest.fixture(scope="module")
def export_bytes(fitted, tmp_path_factory) -> bytes:
    from defectscope.engine.runtimes.exported import export_onnx

    return export_onnx(fitted, tmp_path_factory.mktemp("export") / "model.onnx").read_bytes()


def test_unedited_files_reject_the_defective_part(model_bytes, export_bytes, parts):
    assert predict_outcome(model_bytes, ".safetensors", parts) == "scored"
    assert predict_outcome(export_bytes, ".onnx", parts) == "scored"


@FAST
@given(seed=st.integers(0, 2**32 - 1))
def test_one_edited_header_field_is_refused_or_still_rejects_defects(model_bytes, parts, seed):
    data, _ = edit_model_field(model_bytes, np.random.default_rng(seed))
    predict_outcome(data, ".safetensors", parts)


@FAST
@given(seed=st.integers(0, 2**32 - 1))
def test_one_edited_export_field_is_refused_or_still_rejects_defects(export_bytes, parts, seed):
    data, _ = edit_export_field(export_bytes, np.random.default_rng(seed))
    predict_outcome(data, ".onnx", parts)
