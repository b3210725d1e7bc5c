"""The ``precision`` option: int8 / bf16 / auto features on the torch-free path, what the fit
records, what a model file keeps, and the refusals. The CPU's flags are set by each test, so
nothing here depends on the machine it runs on."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import defectscope
from defectscope.data import load_category
from defectscope.engine.runtimes import precision
from defectscope.errors import ConfigError, ModelFileError

from .conftest import SIZE
from .files import resave

VNNI = frozenset({"avx512_vnni"})


def patchcore(**kwargs):
    params = {"image_size": 2 * SIZE, "coreset_ratio": 0.1, "num_workers": 1, "batch_size": 8}
    return defectscope.PatchCore(**{**params, "seed": 3, **kwargs})


def test_agreement_needs_the_same_order_and_a_small_shift():
    rng = np.random.default_rng(0)
    reference = rng.normal(10.0, 1.0, 64)
    same = precision.agreement(reference, reference)
    assert same["agrees"] and same["rank_correlation"] == 1.0 and same["shift"] == 0.0
    close = precision.agreement(reference, reference * 1.001 + 0.002)
    assert close["agrees"], close
    shuffled = precision.agreement(reference, rng.permutation(reference))
    assert not shuffled["agrees"] and shuffled["rank_correlation"] < 0.5
    # the order kept but every score moved by half the interquartile range
    shifted = precision.agreement(reference, reference + 0.7)
    assert shifted["rank_correlation"] == 1.0 and not shifted["agrees"]
    assert not precision.agreement(reference[:2], reference[:2])["agrees"]  # too few to say


def test_the_cpu_flags_decide(monkeypatch):
    assert "avx512_vnni" in precision.unavailable("int8", frozenset({"avx2"}))
    assert precision.unavailable("int8", VNNI) is None
    assert precision.unavailable("int8", frozenset({"amx_int8"})) is None
    monkeypatch.setattr(precision, "openvino_available", lambda: False)
    reason = precision.unavailable("bf16", frozenset({"amx_bf16"}))
    assert "OpenVINO" in reason and "pip install openvino" in reason
    assert "amx_bf16" in precision.unavailable("bf16", VNNI)
    assert precision.unavailable("fp32", frozenset()) is None


def test_an_unknown_precision_is_one_line():
    with pytest.raises(ConfigError, match="precision"):
        patchcore(precision="int4").options()


@pytest.fixture(scope="module")
def int8_model(texture):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "cpu_flags", lambda: VNNI)
        return patchcore(precision="int8").fit(texture)


def test_int8_scores_every_image_in_int8_and_the_file_keeps_its_graph(
    int8_model, texture, tmp_path
):
    record = int8_model.fit_info_.precision
    assert record["requested"] == record["used"] == "int8"
    assert set(record["agreement"]) == {"int8"}  # compared with fp32, whatever it says
    embedding = int8_model.module_.embedding
    assert embedding.precision == "int8"
    import onnx

    graph = onnx.load_from_string(embedding.int8_graph)
    assert "QuantizeLinear" in {node.op_type for node in graph.graph.node}
    assert graph.metadata_props  # the fp32 graph's metadata travels with it
    images = [s.path for s in load_category(texture).test_samples]
    fp32 = patchcore().fit(texture)
    # the same bank (built from fp32 features in both fits), other features at scoring time
    np.testing.assert_array_equal(
        fp32.module_.fitted_state()["bank"], int8_model.module_.fitted_state()["bank"]
    )
    ours, theirs = int8_model.score(images).scores, fp32.score(images).scores
    assert not np.array_equal(ours, theirs)
    # the threshold comes from out-of-fold scores made in int8: not fp32's
    assert int8_model.threshold_ != fp32.threshold_

    path = int8_model.save(tmp_path / "int8.safetensors")
    from safetensors.numpy import load_file

    saved = load_file(str(path))
    assert saved[precision.INT8_TENSOR].dtype == np.uint8
    assert saved[precision.INT8_TENSOR].tobytes() == embedding.int8_graph
    loaded = defectscope.load(path)
    assert loaded.module_.embedding.precision == "int8"
    assert loaded.fit_info_.precision_used == "int8"
    np.testing.assert_array_equal(loaded.score(images).scores, ours)
    assert loaded.threshold_ == int8_model.threshold_


def test_a_file_whose_graph_and_record_disagree_is_refused(int8_model, texture, tmp_path):
    path = int8_model.save(tmp_path / "int8.safetensors")
    missing = resave(path, tmp_path / "missing.safetensors", drop=(precision.INT8_TENSOR,))
    with pytest.raises(ModelFileError, match="computed in int8, but the file holds no int8"):
        defectscope.load(missing)
    fp32 = patchcore().fit(texture).save(tmp_path / "fp32.safetensors")
    claims = resave(
        fp32,
        tmp_path / "claims.safetensors",
        fitted_changes={"precision": {"requested": "int8", "used": "int8"}},
    )
    with pytest.raises(ModelFileError, match="holds no int8 feature graph"):
        defectscope.load(claims)
    odd = resave(fp32, tmp_path / "odd.safetensors", fitted_changes={"precision": {"used": "int4"}})
    with pytest.raises(ModelFileError, match="precision must say"):
        defectscope.load(odd)
    garbled = {"requested": "auto", "used": "fp32", "agreement": {"bf16": "yes"}}
    garbled = resave(fp32, tmp_path / "garbled.safetensors", fitted_changes={"precision": garbled})
    with pytest.raises(ModelFileError, match="how they compared"):
        defectscope.load(garbled)
    # an edited graph: the checksum refuses it like any other tensor
    from .fuzz.mutate import join_safetensors, split_safetensors

    header, body = split_safetensors(path.read_bytes())
    start, end = header[precision.INT8_TENSOR]["data_offsets"]
    body = bytearray(body)
    body[(start + end) // 2] ^= 0xFF
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(join_safetensors(header, bytes(body)))
    with pytest.raises(ModelFileError, match="checksum"):
        defectscope.load(edited)


def test_a_precision_that_cannot_run_says_why_and_uses_fp32(texture, monkeypatch, caplog):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(precision, "_SAID", set())
    with caplog.at_level(logging.WARNING):
        model = patchcore(precision="int8").fit(texture)
        patchcore(precision="int8", seed=4).fit(texture)
    record = model.fit_info_.precision
    assert record["used"] == "fp32" and "avx512_vnni" in record["reason"]
    assert model.module_.embedding.precision == "fp32"
    said = [r.getMessage() for r in caplog.records if "precision int8" in r.getMessage()]
    assert len(said) == 1 and "using fp32" in said[0]  # once per process

    monkeypatch.setattr(precision, "cpu_flags", lambda: VNNI)
    torch_fit = patchcore(precision="int8", runtime="torch").fit(texture)
    assert torch_fit.fit_info_.precision["used"] == "fp32"
    assert "torch-free path" in torch_fit.fit_info_.precision["reason"]


def test_auto_keeps_a_lower_precision_only_where_its_scores_agree(texture, monkeypatch, caplog):
    """The candidates' arithmetic is replaced: one that computes fp32's very features agrees,
    one that adds noise to them does not."""
    monkeypatch.setattr(precision, "cpu_flags", lambda: VNNI)
    monkeypatch.setattr(precision, "quantize_int8", lambda graph, calibration: b"int8 graph")
    real = precision.features
    noise = {"scale": 0.0}

    def features(name, graph, int8=None):
        run = real("fp32", graph)
        if name == "fp32":
            return run
        rng = np.random.default_rng(0)

        def noisy(images):
            out = run(images)
            return out + noise["scale"] * rng.standard_normal(out.shape).astype(np.float32)

        return noisy

    monkeypatch.setattr(precision, "features", features)
    same = patchcore(precision="auto").fit(texture)
    record = same.fit_info_.precision
    assert record["used"] == "int8" and record["agreement"]["int8"]["agrees"]
    assert record["agreement"]["int8"]["rank_correlation"] == 1.0
    assert "bf16" in record["unavailable"]  # this CPU (as set) has no bf16 units

    noise["scale"] = 5.0
    noisy = patchcore(precision="auto").fit(texture)
    record = noisy.fit_info_.precision
    assert record["used"] == "fp32" and not record["agreement"]["int8"]["agrees"]
    assert noisy.module_.embedding.precision == "fp32"
    assert noisy.module_.embedding.int8_graph is None

    # asked for by name, the precision is used all the same, and the fit warns
    with caplog.at_level(logging.WARNING):
        asked = patchcore(precision="int8").fit(texture)
    record = asked.fit_info_.precision
    assert record["used"] == "int8" and not record["agreement"]["int8"]["agrees"]
    assert asked.module_.embedding.precision == "int8"
    assert any("disagree with fp32" in r.getMessage() for r in caplog.records)
    from defectscope.results import precision_line

    assert "its scores DISAGREE with fp32's (int8: rank correlation" in precision_line(record)


def test_an_int8_model_exports_its_own_int8_graph(int8_model, texture, tmp_path):
    pytest.importorskip("torch")
    import warnings

    import onnx
    import onnxruntime as ort

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: the file computes int8
        path = defectscope.export_onnx(int8_model, tmp_path / "int8.onnx")
    graph = onnx.load(str(path))
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 10
    exported = defectscope.load(path)
    assert exported.identity()["precision"] == {"requested": "int8", "used": "int8"}
    images = sorted((texture / "test").rglob("*.png"))
    want = int8_model.score(images).scores
    # the same int8 graph; a value on a rounding step may land one step apart (0.2% measured)
    np.testing.assert_allclose(exported.score(images).scores, want, rtol=1e-2)
    # a bare ONNX Runtime session runs it (the README's example)
    batch = np.zeros((2, *exported.input_shape, 3), dtype=np.uint8)
    scores, maps = ort.InferenceSession(str(path)).run(None, {"images": batch})
    assert scores.shape == (2,) and maps.shape == (2, *exported.input_shape)


def test_a_bf16_model_exports_in_fp32_and_says_so(texture, tmp_path):
    pytest.importorskip("torch")
    model = patchcore().fit(texture)
    model.fit_info_ = model.fit_info_.replace(precision={"requested": "bf16", "used": "bf16"})
    with pytest.warns(UserWarning, match="computes them in fp32"):
        path = defectscope.export_onnx(model, tmp_path / "bf16.onnx")
    said = defectscope.load(path).identity()["precision"]
    assert said["used"] == "fp32" and said["requested"] == "bf16"
    assert "bf16 features" in said["reason"]


def test_fit_says_which_precision_it_used(texture, tmp_path, monkeypatch, capsys):
    from defectscope.cli import main

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"sse4_2"}))
    args = ["fit", "--data", str(texture), "--project", str(tmp_path), "--model", "patchcore"]
    args += ["--image-size", str(2 * SIZE), "--coreset-ratio", "0.1", "--batch-size", "8"]
    assert main([*args, "--precision", "auto"]) == 0
    out = capsys.readouterr().out
    assert "precision auto cannot run here (bf16: this CPU has none of amx_bf16" in out
    assert out.rstrip().endswith("features in fp32")
    assert main([*args, "--name", "plain"]) == 0
    plain = capsys.readouterr().out
    assert "features in" not in plain and "precision " not in plain  # fp32 says nothing of it


def test_update_builds_the_bank_from_fp32_features(texture, monkeypatch):
    from defectscope.data.loader import iter_batches

    monkeypatch.setattr(precision, "cpu_flags", lambda: VNNI)
    model = patchcore(precision="int8").fit(texture)
    before = len(model.module_.fitted_state()["bank"])
    added = sorted((texture / "test" / "good").glob("*.png"))[:4]
    model.update(added)
    embedding = model.module_.embedding
    assert embedding.precision == "int8"
    new = model.module_.fitted_state()["bank"][before:]
    assert len(new)
    _, batch = next(iter(iter_batches(added, model.config_.input_shape, 8, 0, None)))
    target = model.module_.target
    fp32 = embedding.fp32(batch, target).reshape(-1, new.shape[1])
    int8 = embedding(batch, target).reshape(-1, new.shape[1])
    assert all((fp32 == row).all(axis=1).any() for row in new)
    assert not any((int8 == row).all(axis=1).any() for row in new)


def test_quantizing_a_graph_keeps_it_close_and_the_process_logging_alone(tmp_path, caplog):
    """A one-convolution graph quantized on its calibration images: QDQ nodes, the graph's
    metadata kept, outputs within a few int8 steps of fp32's; ONNX Runtime's tools print
    nothing and leave no handler on the root logger."""
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    weights = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    node = helper.make_node("Conv", ["images", "w"], ["features"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 4, 8, 8])],
        [onnx.numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    model.metadata_props.add(key="defectscope", value="{}")
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    images = rng.random((6, 3, 8, 8)).astype(np.float32)
    root = logging.getLogger()
    with caplog.at_level(logging.INFO):
        handlers, level = list(root.handlers), root.level
        quantized = precision.quantize_int8(path, images)
        assert root.handlers == handlers and root.level == level
    assert [r.getMessage() for r in caplog.records if r.name == "root"] == []
    parsed = onnx.load_from_string(quantized)
    assert "QuantizeLinear" in {n.op_type for n in parsed.graph.node}
    assert {p.key for p in parsed.metadata_props} == {"defectscope"}
    want = precision.features("fp32", path)(images)
    got = precision.features("int8", path, quantized)(images)
    assert not np.array_equal(got, want)
    np.testing.assert_allclose(got, want, atol=0.05 * np.abs(want).max())


def test_results_and_the_report_say_the_models_precision(int8_model, texture, tmp_path):
    from defectscope.cli import main

    path = int8_model.save(tmp_path / "int8.safetensors")
    project = tmp_path / "runs"
    args = ["evaluate", "--model", str(path), "--data", str(texture), "--project", str(project)]
    assert main([*args, "-q"]) == 0
    run = project / "evaluate" / texture.name
    import json

    results = json.loads((run / "results.json").read_text())["results"]
    assert results[0]["model"]["precision"]["used"] == "int8"
    assert (
        "Features in int8 (the statistics from fp32 features); its scores"
        in (run / "report.html").read_text()
    )
