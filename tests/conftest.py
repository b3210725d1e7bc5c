"""Shared fixtures: a small synthetic MVTec tree generated once per session, offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from defectscope.data.synthetic import make_category

SIZE = 64  # image side of the synthetic data and the models' input: small keeps tests fast
#: command-line options of a small, fast PaDiM
PADIM_ARGS = ["--model", "padim", "--image-size", str(SIZE), "--n-features", "40"]
PADIM_ARGS += ["--batch-size", "8", "-q"]


@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """Exported ONNX graphs go to a per-session cache, never the user's."""
    os.environ["DEFECTSCOPE_CACHE"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def mvtec_root(tmp_path_factory) -> Path:
    """``root/texture`` with masks and ``root/object`` without ground truth (image level only)."""
    root = tmp_path_factory.mktemp("mvtec")
    make_category(
        root / "texture",
        kind="texture",
        size=SIZE,
        n_train=24,
        n_test_good=8,
        n_test_defect=5,
        seed=1,
    )
    make_category(
        root / "object",
        kind="object",
        size=SIZE,
        n_train=24,
        n_test_good=8,
        n_test_defect=5,
        seed=2,
        with_masks=False,
    )
    return root


@pytest.fixture(scope="session")
def texture(mvtec_root) -> Path:
    return mvtec_root / "texture"


def small_padim(**kwargs):
    from defectscope import PaDiM

    params = {"image_size": SIZE, "batch_size": 8, "num_workers": 1, "n_features": 50}
    params.update(kwargs)
    return PaDiM(**params)


@pytest.fixture(scope="session")
def fitted(texture):
    """A PaDiM fitted once on the synthetic texture (PyTorch runtime, the reference)."""
    return small_padim(runtime="torch").fit(texture)
