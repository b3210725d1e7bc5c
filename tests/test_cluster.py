"""Scale-out: sharded fits (any executor) and the Ray paths on a local Ray started by the test.

The Ray tests start a private Ray (``num_cpus=2``, node address 127.0.0.1) once for the module
and stop it at the end; they check that Ray computes what the serial tool computes.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from defectscope import PatchCore
from defectscope.data import load_category
from defectscope.engine.fitting.sharding import SerialExecutor, split_evenly
from defectscope.engine.workflows.benchmark import benchmark, fit_root
from defectscope.engine.workflows.evaluation import evaluate
from defectscope.errors import ConfigError
from defectscope.models.features import Illumination
from defectscope.ops.coreset import Coreset, covering_radius, random_projection

from .conftest import SIZE, small_padim


def small_patchcore(**kwargs):
    params = {"image_size": SIZE, "batch_size": 8, "num_workers": 1, "coreset_ratio": 0.05}
    params.update(kwargs)
    return PatchCore(**params)


def test_split_evenly_keeps_order_and_sizes():
    parts = split_evenly(list(range(10)), 3)
    assert [list(p) for p in parts] == [[0, 1, 2], [3, 4, 5, 6], [7, 8, 9]]
    assert len(split_evenly([1, 2], 5)) == 2  # never an empty shard


def test_padim_shards_equal_the_serial_fit(texture):
    serial = small_padim(runtime="torch").fit(texture)
    sharded = small_padim(runtime="torch").fit(texture, shards=3, executor=SerialExecutor())
    a, b = serial.module_, sharded.module_
    torch.testing.assert_close(b.mean, a.mean, rtol=1e-5, atol=1e-5)
    # the precision factor inverts the covariance: float32 batch scatters summed in another
    # grouping differ in the last bits, which the inverse amplifies a little
    torch.testing.assert_close(b.precision_chol, a.precision_chol, rtol=1e-3, atol=1e-3)
    assert float(b.illumination.target) == float(a.illumination.target)
    # the same images' statistics, summed in another order
    assert sharded.fit_info_["intensity"] == pytest.approx(serial.fit_info_["intensity"], rel=1e-6)
    # a sharded fit takes its threshold from held-out images, a serial one from out-of-fold
    # scores: other rules, so only the statistics and the scores are compared
    assert "held-out" in sharded.fit_info_["threshold_source"]["rule"]
    assert "out-of-fold" in serial.fit_info_["threshold_source"]["rule"]
    test = [s.path for s in load_category(texture).test_samples]
    np.testing.assert_allclose(sharded.score(test).scores, serial.score(test).scores, rtol=1e-4)


def test_patchcore_shards_cover_every_patch_and_detect(texture):
    model = small_patchcore(runtime="torch").fit(texture, shards=3)
    info = model.fit_info_
    bank = model.module_.bank
    # the shards' selection and the held-out images' own coreset, each rounded
    assert abs(len(bank) - 0.05 * info["n_patches"]) <= 1
    # every training patch lies within the reported radius of the bank (projected space)
    feats = []
    for path in load_category(texture).train_paths:
        from defectscope.data.images import load_image
        from defectscope.engine.fitting.estimator import to_tensor

        image = to_tensor(np.ascontiguousarray(load_image(path, SIZE)[None]))
        with torch.inference_mode():
            feats.append(model.module_.patch_features(image).reshape(-1, bank.shape[1]))
    patches = torch.cat(feats)
    assert len(patches) == info["n_patches"]
    config = model.config_
    projection = random_projection(bank.shape[1], config.projection_dim, config.seed)
    union = torch.cat([bank, patches])
    cover = Coreset(torch.arange(len(bank)), info["coreset_radius"], projection)
    assert covering_radius(union, cover) <= info["coreset_radius"] * (1 + 1e-4)
    result = evaluate(model, load_category(texture))
    assert result.metrics["image_auroc"] >= 0.9


def test_detectors_that_cannot_be_sharded_say_so(texture):
    from defectscope import Autoencoder

    with pytest.raises(ConfigError, match="cannot be fitted in shards; padim, patchcore can"):
        Autoencoder(image_size=SIZE).fit(texture, shards=2)


def test_illumination_target_is_shared_not_recomputed():
    shard = Illumination("gain")
    shard.target.fill_(0.25)
    shard.calibrate(torch.full((2, 3, 4, 4), 0.9))  # a shard's own first batch changes nothing
    assert float(shard.target) == 0.25


# -- on Ray ------------------------------------------------------------------------------------
ray = pytest.importorskip("ray", reason="the Ray paths need `pip install defectscope[ray]`")
SLOW = pytest.mark.slow  # a private Ray per module: `pytest -m "not slow"` skips these


@pytest.fixture(scope="module")
def local_ray():
    from defectscope.cluster import start_ray, stop_ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="ERROR",
    )
    start_ray(None)  # already initialised: only sets Ray Data's options
    try:
        yield
    finally:
        stop_ray()
        ray.shutdown()


def _executor():
    from defectscope.cluster import RayExecutor

    return RayExecutor(task_cpus=1)


@pytest.fixture
def one_thread(monkeypatch):
    """The serial side computes with one thread, as a Ray task declaring one CPU does
    (``OMP_NUM_THREADS=1``: torch and ONNX Runtime): a network trained with other thread counts
    sums in another order and its rounding grows with every step, so the comparison would
    depend on the machine's cores and load. With one thread on both sides it does not."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@SLOW
def test_ray_map_cancels_only_the_tasks_it_did_not_take(local_ray, monkeypatch):
    # Cancelling a task whose result was already taken races Ray's completion bookkeeping and,
    # under load, aborted the whole driver (the test process) with no message.
    import time

    cancelled = []
    real_cancel = ray.cancel

    def spy(ref, **kwargs):
        cancelled.append(ref)
        real_cancel(ref, **kwargs)

    monkeypatch.setattr(ray, "cancel", spy)
    executor = _executor()
    assert list(executor.map(lambda x: x * x, [1, 2, 3])) == [1, 4, 9]
    # abandoned after its last result, as zip() abandons it: nothing to cancel
    assert [b for _, b in zip("ab", executor.map(lambda x: -x, [1, 2]))] == [-1, -2]
    assert cancelled == []
    results = executor.map(lambda s: time.sleep(s) or s, [0, 60, 60])
    assert next(results) == 0
    results.close()  # an interrupted driver: the two unfinished tasks are stopped
    assert len(cancelled) == 2


@SLOW
def test_ray_benchmark_equals_serial(local_ray, one_thread, mvtec_root, tmp_path):
    (tmp_path / "data").mkdir()
    for name in ("texture", "object"):
        (tmp_path / "data" / name).symlink_to(mvtec_root / name)
    broken = tmp_path / "data" / "broken" / "train" / "good"
    broken.mkdir(parents=True)  # a category with no test split: reported, not fatal
    (broken / "a.png").write_bytes(b"not a png")
    params = {
        "padim": {"image_size": SIZE, "n_features": 40, "batch_size": 8},
        "classifier": {"image_size": SIZE, "epochs": 2, "batch_size": 8},
    }
    runs = {}
    for name, executor in (("serial", None), ("ray", _executor())):
        (tmp_path / name).mkdir()
        runs[name] = benchmark(
            tmp_path / "data",
            ["padim", "classifier"],
            params,
            tmp_path / name,
            log=lambda s: None,
            executor=executor,
        )
    serial, on_ray = runs["serial"], runs["ray"]
    assert on_ray.failures == serial.failures and len(serial.failures) == 1
    assert "broken" in serial.failures[0]
    assert [(r.category, r.detector) for r in on_ray.results] == [
        (r.category, r.detector) for r in serial.results
    ]
    for a, b in zip(serial.results, on_ray.results):
        assert b.threshold == pytest.approx(a.threshold, rel=1e-5)
        np.testing.assert_allclose(
            [i.score for i in b.images], [i.score for i in a.images], rtol=1e-4
        )
        for key, value in a.metrics.items():
            assert b.metrics[key] == pytest.approx(value, abs=1e-6), key
    meta = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert meta["status"] == "complete" and meta["executor"].startswith("Ray")
    assert (tmp_path / "ray" / "report.html").is_file()
    assert (tmp_path / "ray" / "models" / "padim" / "texture" / "model.safetensors").is_file()


@SLOW
def test_ray_fit_of_a_root_and_sharded_fit_equal_serial(local_ray, mvtec_root, texture, tmp_path):
    params = {"image_size": SIZE, "n_features": 40, "batch_size": 8}
    (tmp_path / "s").mkdir()
    (tmp_path / "r").mkdir()
    serial, _ = fit_root(mvtec_root, "padim", params, tmp_path / "s", log=lambda s: None)
    with _executor() as executor:  # already started: leaves the module's Ray running
        on_ray, failures = fit_root(
            mvtec_root, "padim", params, tmp_path / "r", log=lambda s: None, executor=executor
        )
    assert failures == []
    assert [r["category"] for r in on_ray] == [r["category"] for r in serial]
    for a, b in zip(serial, on_ray):
        assert b["threshold"] == pytest.approx(a["threshold"], rel=1e-5)
    assert ray.is_initialized()

    local = small_padim(runtime="torch").fit(texture, shards=2)
    remote = small_padim(runtime="torch").fit(texture, shards=2, executor=_executor())
    # a Ray task runs torch on the one CPU it declares: other thread counts, other rounding
    torch.testing.assert_close(remote.module_.mean, local.module_.mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        remote.module_.precision_chol, local.module_.precision_chol, rtol=1e-3, atol=1e-3
    )


@SLOW
def test_ray_batch_predict_equals_serial_in_order(local_ray, fitted, texture, tmp_path):
    from defectscope.cluster.predict import predict_ray
    from defectscope.engine.runtimes.exported import export_onnx
    from defectscope.engine.workflows.loading import load

    onnx = export_onnx(fitted, tmp_path / "m.onnx")
    images = sorted(str(p) for p in (texture / "test").rglob("*.png"))
    listing = tmp_path / "paths.txt"
    listing.write_text("\n".join([*images[:3], str(tmp_path / "missing.png")]) + "\n")
    bad = tmp_path / "in" / "bad.png"
    bad.parent.mkdir()
    bad.write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    out.mkdir()
    meta = predict_ray(
        onnx,
        [texture / "test", bad],
        out,
        path_lists=[listing],
        actors=2,
        batch_size=4,
        save="fail",
        log=lambda s: None,
    )
    expected_paths = [*images, str(bad), *images[:3], str(tmp_path / "missing.png")]
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["path"] for r in rows] == expected_paths
    assert [int(r["index"]) for r in rows] == list(range(len(expected_paths)))
    serial = load(onnx).predict(images)
    got = [float(r["score"]) for r in rows[: len(images)]]
    np.testing.assert_allclose(got, [p.score for p in serial], rtol=1e-4)
    assert [r["verdict"] for r in rows[: len(images)]] == [
        "fail" if p.is_anomalous else "pass" for p in serial
    ]
    # a damaged file and a missing one are recorded, not fatal
    errors = {r["path"]: r["error"] for r in rows if r["verdict"] == "error"}
    assert set(errors) == {str(bad), str(tmp_path / "missing.png")}
    assert "not found" in errors[str(tmp_path / "missing.png")]
    assert meta["errors"] == 2 and meta["images"] == len(expected_paths)
    assert meta["failed"] == sum(r["verdict"] == "fail" for r in rows)
    # Parquet holds the same rows; a failed part has its overlay, errors have a NaN score
    import pyarrow.parquet as pq

    table = pq.read_table(out / "predictions.parquet").to_pylist()
    assert [r["path"] for r in table] == expected_paths
    assert math.isnan(table[len(images)]["score"]) and table[len(images)]["is_anomalous"] is None
    for row in rows:
        if row["verdict"] == "fail":
            assert (out / row["overlay"]).is_file()


@SLOW
def test_ray_predict_says_the_shift_a_local_predict_says(local_ray, fitted, texture, tmp_path):
    from PIL import Image

    from defectscope.cluster.predict import predict_ray
    from defectscope.engine.workflows.predicting import predict_to_folder

    dark = tmp_path / "dark"
    dark.mkdir()
    for path in sorted((texture / "test" / "good").glob("*.png"))[:4]:
        pixels = np.asarray(Image.open(path).convert("RGB")).astype(np.float32) * 0.5
        Image.fromarray(pixels.astype(np.uint8)).save(dark / path.name)
    model = fitted.save(tmp_path / "m.safetensors")
    (tmp_path / "ray").mkdir()
    (tmp_path / "local").mkdir()
    meta = predict_ray(model, [dark], tmp_path / "ray", actors=1, batch_size=2, log=lambda s: None)
    _, local = predict_to_folder(fitted, [dark], tmp_path / "local")
    shift = [n for n in local if n.startswith("shift:")]
    assert shift and any("darker" in n for n in shift)
    assert [n for n in meta["notices"] if n.startswith("shift:")] == shift


@SLOW
def test_cli_predict_on_ray_writes_both_tables(local_ray, fitted, texture, tmp_path):
    from defectscope.cli import main
    from defectscope.engine.runtimes.exported import export_onnx

    onnx = export_onnx(fitted, tmp_path / "m.onnx")
    code = main(
        ["predict", "--model", str(onnx), str(texture / "test" / "good"), "--executor", "ray"]
        + ["--project", str(tmp_path), "--name", "p", "--save", "none", "-q"]
    )
    assert code == 0
    out = tmp_path / "predict" / "p"
    with open(out / "predictions.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(list((texture / "test" / "good").glob("*.png")))
    meta = json.loads((out / "run.json").read_text())
    assert meta["errors"] == 0 and meta["executor"].startswith("ray data (2 actors")
    assert ray.is_initialized()  # the test's Ray was not stopped by the command


def test_cli_scale_out_errors(tmp_path, monkeypatch, capsys):
    import sys

    from defectscope.cli import main

    assert main(["predict", "--model", "m.onnx", "x.png", "--address", "auto"]) == 2
    assert "--address needs --executor ray" in capsys.readouterr().err
    assert main(["predict", "--model", "m.onnx"]) == 2
    assert "predict needs images" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    args = ["benchmark", "--data", str(tmp_path), "--executor", "ray", "--project", str(tmp_path)]
    (tmp_path / "c" / "train" / "good").mkdir(parents=True)
    assert main(args) == 2
    assert "pip install 'defectscope[ray]'" in capsys.readouterr().err
