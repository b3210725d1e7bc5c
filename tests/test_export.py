"""`defectscope export`: one ONNX file for the whole pipeline, run without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from defectscope.cli import main
from defectscope.data import load_category

from .conftest import PADIM_ARGS, SIZE

SMALL = PADIM_ARGS


@pytest.fixture(scope="module")
def fitted_run(texture, tmp_path_factory):
    project = tmp_path_factory.mktemp("runs")
    assert main(["fit", "--data", str(texture), "--project", str(project), *SMALL]) == 0
    return project / "fit" / "texture"


def test_export_then_predict_gives_the_same_scores(fitted_run, texture, tmp_path, capsys):
    assert main(["export", "--model", str(fitted_run), "-q"]) == 0
    onnx_file = fitted_run / "model.onnx"
    assert onnx_file.is_file() and "exported padim" in capsys.readouterr().out
    scores = {}
    for name, model in (("torch", fitted_run), ("onnx", onnx_file)):
        project = tmp_path / name
        argv = ["predict", "--model", str(model), str(texture / "test"), "--project", str(project)]
        assert main([*argv, "-q", "--no-images"]) == 0
        rows = json.loads((project / "predict" / "predict" / "predictions.json").read_text())
        scores[name] = {r["path"]: r["score"] for r in rows}
    assert scores["torch"].keys() == scores["onnx"].keys()
    for path, value in scores["torch"].items():
        assert scores["onnx"][path] == pytest.approx(value, rel=1e-3)


README_EXAMPLE = """
import json, sys
import numpy as np
import onnxruntime as ort
from PIL import Image

session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = json.loads(session.get_modelmeta().custom_metadata_map["defectscope"])
height, width = meta["input_shape"]
image = Image.open(sys.argv[2]).convert("RGB").resize((width, height), Image.BILINEAR)
scores, maps = session.run(None, {"images": np.asarray(image)[None]})
verdict = "FAIL" if scores[0] > meta["threshold"] else "pass"
print(verdict, float(scores[0]), maps.shape)
"""


def test_bare_onnxruntime_example_matches_defectscope(fitted_run, texture, tmp_path):
    """The README's example: onnxruntime, numpy and Pillow only; same score as predict."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert README_EXAMPLE.strip() in readme  # the example tested is the one users read
    onnx_file = fitted_run / "model.onnx"
    if not onnx_file.exists():
        assert main(["export", "--model", str(fitted_run), "-q"]) == 0
    image = next(s.path for s in load_category(texture).test_samples if s.is_anomalous)
    script = tmp_path / "run_exported.py"
    script.write_text(textwrap.dedent(README_EXAMPLE))
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], "
        "run_name='__main__'); assert 'torch' not in sys.modules and "
        "'defectscope' not in sys.modules"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(script), str(onnx_file), str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    import defectscope

    reference = defectscope.load(fitted_run).predict([image])[0]
    assert out[0] == ("FAIL" if reference.is_anomalous else "pass")
    assert float(out[1]) == pytest.approx(reference.score, rel=1e-3)
    assert out[2:] == ["(1,", f"{SIZE},", f"{SIZE})"]


def test_predict_and_evaluate_with_exported_file_do_not_import_torch(fitted_run, texture, tmp_path):
    onnx_file = fitted_run / "model.onnx"
    if not onnx_file.exists():
        assert main(["export", "--model", str(fitted_run), "-q"]) == 0
    code = textwrap.dedent(
        f"""
        import sys
        from defectscope.cli import main
        assert main(["predict", "--model", {str(onnx_file)!r}, {str(texture / "test")!r},
                     "--project", {str(tmp_path)!r}, "-q"]) == 0
        assert main(["evaluate", "--model", {str(onnx_file)!r}, "--data", {str(texture)!r},
                     "--project", {str(tmp_path)!r}, "-q"]) == 0
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_quiet_one_image_predict_imports_only_what_it_uses(fitted_run, texture, tmp_path):
    """Start-up: no torch, no progress-bar library when quiet, no detector registry, no Ray."""
    onnx_file = fitted_run / "model.onnx"
    if not onnx_file.exists():
        assert main(["export", "--model", str(fitted_run), "-q"]) == 0
    image = next((texture / "test" / "good").glob("*.png"))
    code = textwrap.dedent(
        f"""
        import sys
        from defectscope.cli import main
        assert main(["predict", "--model", {str(onnx_file)!r}, {str(image)!r},
                     "--project", {str(tmp_path)!r}, "-q"]) == 0
        print(" ".join(sorted(sys.modules)))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.strip().splitlines()[-1].split())
    for heavy in ("torch", "tqdm", "defectscope.models", "ray", "scipy", "matplotlib"):
        assert heavy not in loaded, heavy


def test_export_rejects_damaged_onnx(tmp_path):
    import defectscope
    from defectscope.errors import ModelFileError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ModelFileError, match="is not a readable ONNX model"):
        defectscope.load(bad)
