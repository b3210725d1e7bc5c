"""The HTTP service: every route and every error with FastAPI's test client, the operator page
in headless Chromium (Playwright), and a server on an exported model that imports no torch."""

from __future__ import annotations

import base64
import contextlib
import io
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the serve extra: pip install 'defectscope[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from defectscope.cli import main  # noqa: E402
from defectscope.serve.app import Limits, create_app  # noqa: E402

from .conftest import PADIM_ARGS  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(texture, tmp_path_factory):
    project = tmp_path_factory.mktemp("serve")
    assert main(["fit", "--data", str(texture), "--project", str(project), *PADIM_ARGS]) == 0
    run = project / "fit" / "texture"
    assert main(["export", "--model", str(run), "-q"]) == 0
    return run / "model.onnx"


@pytest.fixture(scope="module")
def client(onnx_model):
    with TestClient(create_app(onnx_model)) as c:
        yield c


def png(path) -> bytes:
    return path.read_bytes()


def test_health_and_model(client, onnx_model):
    from defectscope.digest import file_sha256

    assert client.get("/health").json() == {"status": "ok"}
    info = client.get("/model").json()
    assert info["detector"] == "padim" and info["image_size"] == 64
    assert info["model_sha256"] == file_sha256(onnx_model)
    assert info["threshold"] > 0 and info["colour_scale"][0] < info["colour_scale"][1]


def test_predict_matches_the_library(client, onnx_model, texture):
    import defectscope

    files = (
        sorted((texture / "test" / "scratch").glob("*.png"))[:2]
        + sorted((texture / "test" / "good").glob("*.png"))[:1]
    )
    response = client.post(
        "/predict", files=[("files", (p.name, png(p), "image/png")) for p in files]
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = defectscope.load(onnx_model).predict(files)
    assert [r["score"] for r in results] == pytest.approx([p.score for p in expected], rel=1e-6)
    assert [r["verdict"] == "fail" for r in results] == [p.is_anomalous for p in expected]
    assert all(set(r) >= {"normalized_score", "threshold", "regions"} for r in results)

    raw = client.post(
        "/predict?overlay=true", content=png(files[0]), headers={"content-type": "image/png"}
    )
    [one] = raw.json()["results"]
    assert one["score"] == pytest.approx(results[0]["score"], rel=1e-6)
    overlay = Image.open(io.BytesIO(base64.b64decode(one["overlay_png_base64"])))
    assert overlay.size[0] > 64 and overlay.size[1] > 64  # the image plus banner and colour bar

    flipped = client.post(f"/predict?threshold={one['score'] + 1}", content=png(files[0]))
    assert flipped.json()["results"][0]["verdict"] == "pass"


@pytest.mark.parametrize(
    "kwargs, status, message",
    [
        ({"content": b""}, 400, "no image in the request"),
        ({"content": b"not an image at all"}, 415, "not an image file this service reads"),
        ({"files": [("files", ("a.txt", b"hello", "text/plain"))]}, 415, "not an image"),
        ({"content": b"\x89PNG\r\n\x1a\n" + b"\0" * 40}, 415, "not an image"),
        ({"params": {"threshold": "abc"}, "content": b"x"}, 422, "invalid request"),
        ({"params": {"threshold": "nan"}, "content": b"x"}, 422, "finite"),
    ],
)
def test_bad_requests_get_4xx_json(client, kwargs, status, message):
    response = client.post("/predict", **kwargs)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_tiny_image_and_limits(onnx_model, texture):
    image = sorted((texture / "test" / "good").glob("*.png"))[0]
    tiny = io.BytesIO()
    Image.new("RGB", (4, 4)).save(tiny, format="PNG")
    limits = Limits(max_upload_bytes=30_000, max_images=2, max_queue=2)
    with TestClient(create_app(onnx_model, limits=limits)) as c:
        r = c.post("/predict", content=tiny.getvalue())
        assert r.status_code == 422 and "at least 16 pixels" in r.json()["error"]
        many = [("files", (f"{i}.png", png(image), "image/png")) for i in range(3)]
        r = c.post("/predict", files=many)
        assert r.status_code == 413 and "the limit is 2" in r.json()["error"]
        big = c.post("/predict", content=b"\0" * 40_000)
        assert big.status_code == 413 and "over the limit" in big.json()["error"]


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_only_the_cli_formats_and_decoded_sizes_within_budget(onnx_model):
    # a small file that decodes big: 16-bit grey, 1500 x 1500, mostly zeros
    big = _encoded(Image.new("I;16", (1500, 1500)), "PNG")
    pages = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    tiff = _encoded(pages[0], "TIFF", save_all=True, append_images=pages[1:])
    gif = _encoded(Image.new("RGB", (32, 32)), "GIF")
    limits = Limits(max_decoded_bytes=16 * 1024 * 1024)
    with TestClient(create_app(onnx_model, limits=limits)) as c:
        r = c.post("/predict", content=big)
        assert r.status_code == 413 and "needs about" in r.json()["error"], r.text
        assert len(big) < 100_000  # the budget is on the decoded size, not the upload
        r = c.post("/predict", content=gif)
        assert r.status_code == 415 and "GIF images are not accepted" in r.json()["error"]
        r = c.post("/predict", content=tiff)
        assert r.status_code == 422 and "2 frames" in r.json()["error"]
        for route in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(route).status_code == 404
        page = c.get("/")
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'self'" in page.headers["content-security-policy"]


def test_api_key_is_redacted_from_access_log_lines():
    import logging

    from defectscope.serve.app import RedactKey

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        "",
        0,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/?api_key=s3cret&x=1", "1.1", 200),
        None,
    )
    assert RedactKey().filter(record)
    assert "s3cret" not in record.getMessage() and "api_key=[redacted]&x=1" in record.getMessage()


def test_queue_full_is_503_with_retry_after(onnx_model, texture):
    from defectscope.serve.batcher import QueueFull

    image = sorted((texture / "test" / "good").glob("*.png"))[0]
    with TestClient(create_app(onnx_model)) as c:
        batcher = c.app.state.batcher

        def full(images):
            raise QueueFull("64 images are waiting (limit 64)")

        batcher.submit = full
        r = c.post("/predict", content=png(image))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "busy" in r.json()["error"]


def test_api_key(onnx_model, texture):
    image = sorted((texture / "test" / "good").glob("*.png"))[0]
    with TestClient(create_app(onnx_model, api_key="s3cret")) as c:
        assert c.get("/health").status_code == 200
        for route in ("/model", "/"):
            assert c.get(route).status_code == 401
        assert c.post("/predict", content=png(image)).status_code == 401
        wrong = c.get("/model", headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]
        assert c.get("/model", headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/model", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        ok = c.post("/predict", content=png(image), headers={"X-API-Key": "s3cret"})
        assert ok.status_code == 200
        assert c.get("/?api_key=s3cret").status_code == 200


def test_concurrent_requests_are_batched(onnx_model, texture):
    images = sorted((texture / "test").rglob("*.png"))
    with TestClient(create_app(onnx_model, limits=Limits(max_wait=0.05))) as c:
        alone = {
            p.name + p.parent.name: c.post("/predict", content=png(p)).json()["results"][0]
            for p in images
        }
        batcher = c.app.state.batcher
        before = batcher.batches
        out = {}

        def post(p):
            out[p.name + p.parent.name] = c.post("/predict", content=png(p)).json()["results"][0]

        threads = [threading.Thread(target=post, args=(p,)) for p in images]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert batcher.batches - before < len(images)  # some requests shared a model call
        for k, r in out.items():  # batching does not change a score
            assert r["score"] == pytest.approx(alone[k]["score"], rel=1e-5)


def test_server_on_exported_model_imports_no_torch(onnx_model, texture):
    image = sorted((texture / "test" / "good").glob("*.png"))[0]
    code = textwrap.dedent(
        f"""
        import sys
        from fastapi.testclient import TestClient
        from defectscope.serve.app import create_app
        with TestClient(create_app({str(onnx_model)!r})) as c:
            r = c.post("/predict?overlay=true", content=open({str(image)!r}, "rb").read())
            assert r.status_code == 200, r.text
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_server(model, limits: Limits | None = None, feedback_dir=None):
    """The service as `defectscope serve` configures it, on a free loopback port, in a thread;
    stopped at the end."""
    import uvicorn

    from defectscope.serve.app import server_config

    port = _free_port()
    limits = limits or Limits()
    app = create_app(model, limits=limits, feedback_dir=feedback_dir)
    server = uvicorn.Server(server_config(app, port=port, limits=limits, quiet=True))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start within 30 s"
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def feedback_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("feedback")


@pytest.fixture(scope="module")
def live_server(onnx_model, feedback_dir):
    with running_server(onnx_model, feedback_dir=feedback_dir) as port:
        yield f"http://127.0.0.1:{port}"


def _exchange(port: int, head: bytes, wait_s: float) -> bytes:
    """Send ``head`` and then nothing; what the server answers before closing, within
    ``wait_s`` seconds (b"" if it closed without a word)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as conn:
        conn.sendall(head)
        received = b""
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                chunk = conn.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                return received
            received += chunk
        raise AssertionError(f"the connection was still open after {wait_s} s: {received[:80]!r}")


@pytest.mark.slow
def test_slow_clients_are_cut_off(onnx_model):
    with running_server(onnx_model, Limits(upload_timeout=1.0)) as port:
        # a request head that never ends ("slowloris"): closed after the deadline
        start = time.monotonic()
        assert _exchange(port, b"POST /predict HTTP/1.1\r\nHost: x\r\n", 10) == b""
        assert 0.5 < time.monotonic() - start < 8
        # a body that never arrives: 408 with a JSON reason
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789"
        answer = _exchange(port, head, 10)
        assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
        assert b"the upload took longer than 1 s (10 bytes arrived)" in answer
        # and the service still answers everyone else
        reply = _exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10)
        assert reply.startswith(b"HTTP/1.1 200")


@pytest.mark.slow
def test_operator_page_in_headless_chromium(live_server, feedback_dir, texture, tmp_path):
    import json

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "headless Chromium not installed (Debian package 'chromium'; .ci/run installs it)"
        )
    from playwright.sync_api import sync_playwright

    # a synthetic part with a bright scratch the model has never seen
    part = np.asarray(
        Image.open(sorted((texture / "test" / "good").glob("*.png"))[0]).convert("RGB")
    ).copy()
    part[20:26, 8:56] = 255
    upload = tmp_path / "scratched.png"
    Image.fromarray(part).save(upload)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.goto(live_server + "/", timeout=30_000)
            page.wait_for_selector("#model:has-text('padim model')", timeout=30_000)
            page.set_input_files("#files", str(upload))
            badge = page.locator(".card .verdict").first
            badge.wait_for(timeout=30_000)
            assert badge.inner_text() == "FAIL"
            # the plain heatmap at the image's own size: no banner or threshold mark baked in
            # that could disagree with the slider
            assert page.evaluate(
                "() => { const i = document.querySelector('.card img');"
                " return i.complete && i.naturalWidth === 64 && i.naturalHeight === 64; }"
            )
            card = page.locator(".card").first
            assert card.get_attribute("class") == "card failed"
            page.locator("#threshold").fill(page.get_attribute("#threshold", "max"))
            assert badge.inner_text() == "pass"  # the slider re-classifies without a request
            assert card.get_attribute("class") == "card passed"
            page.click("#reset")
            assert badge.inner_text() == "FAIL"
            assert page.locator("#history li").count() == 1
            # the operator says this one was fine: stored as a false alarm
            page.locator(".card button[data-label=good]").first.click()
            page.wait_for_selector(".card .note:has-text('saved as good')", timeout=30_000)
            # the chart of recent scores has drawn the one score, in red (above the threshold)
            drawn = page.evaluate(
                "() => { const c = document.getElementById('chart').getContext('2d');"
                " const d = c.getImageData(0, 0, 640, 120).data; let red = 0;"
                " for (let i = 0; i < d.length; i += 4) red += d[i] > 150 && d[i + 1] < 80;"
                " return red; }"
            )
            assert drawn > 5
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
        cases = [json.loads(x) for x in (feedback_dir / "feedback.jsonl").read_text().splitlines()]
        assert len(cases) == 1 and cases[0]["label"] == "good" and cases[0]["false_alarm"]
        assert (feedback_dir / cases[0]["image"]).read_bytes() == upload.read_bytes()


def test_the_service_and_predict_give_the_same_row_and_overlay(
    client, onnx_model, texture, tmp_path
):
    """One verdict row and one overlay (defectscope.verdict): the service's answer for an image
    is the predictions table's row for it, and its overlay is the overlay file, pixel for pixel."""
    import csv
    import json

    image = sorted((texture / "test" / "scratch").glob("*.png"))[0]
    [served] = client.post(
        "/predict?overlay=true", files=[("files", (image.name, png(image)))]
    ).json()["results"]
    argv = ["predict", "--model", str(onnx_model), str(image), "--project", str(tmp_path), "-q"]
    assert main(argv) == 0
    run = tmp_path / "predict" / "predict"
    [row] = csv.DictReader(open(run / "predictions.csv"))
    assert served["score"] == pytest.approx(float(row["score"]), rel=1e-6)
    assert served["normalized_score"] == pytest.approx(float(row["normalized_score"]), abs=1e-4)
    for key in ("verdict", "threshold", "n_regions"):
        assert str(served[key]) == row[key] or float(served[key]) == float(row[key]), key
    assert served["is_anomalous"] == (row["is_anomalous"] == "True")
    assert served["regions"] == json.loads(row["regions"])
    from_service = np.asarray(
        Image.open(io.BytesIO(base64.b64decode(served["overlay_png_base64"])))
    )
    written = np.asarray(Image.open(run / row["overlay"]))
    assert row["name"] == served["name"] == image.name  # the same label on both
    np.testing.assert_array_equal(from_service, written)


@pytest.mark.slow
def test_a_bounded_fuzz_of_the_service_on_loopback(live_server, texture):
    """Odd requests to every route over real sockets, 80 of them within 120 s: each gets a
    2xx or a 4xx/503 with a JSON reason, never a 500 or a dropped connection, and the service
    still answers afterwards."""
    import random

    import httpx

    from .fuzz.mutate import image_mutations

    rng = random.Random(0)
    image = png(sorted((texture / "test" / "good").glob("*.png"))[0])
    mutations = image_mutations()
    odd_params = ["", "nan", "inf", "-1", "1e308", "abc", "true", "0", "[]", "%00", "9" * 400]
    statuses: dict[int, int] = {}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=live_server, timeout=20) as http:
        for case in range(80):
            assert time.monotonic() < deadline, f"the fuzz ran past 120 s at case {case}"
            body = image
            if rng.random() < 0.7:
                body, _ = mutations[rng.randrange(len(mutations))](
                    image, np.random.default_rng(case)
                )
            params = {
                key: rng.choice(odd_params)
                for key in rng.sample(["threshold", "overlay", "heatmap", "name", "x"], 2)
            }
            kind = rng.choice(["raw", "multipart", "json", "get", "unknown"])
            if kind == "raw":
                headers = {"content-type": rng.choice(["image/png", "text/plain", "", "a/b"])}
                response = http.post("/predict", content=body, params=params, headers=headers)
            elif kind == "multipart":
                name = rng.choice(["a.png", "", "../../x.png", "é.png", "a" * 300 + ".png"])
                files = [("files", (name, body, "image/png"))] * rng.randint(1, 3)
                response = http.post("/predict", files=files, params=params)
            elif kind == "json":
                response = http.post("/predict", json={"image": "abc"}, params=params)
            elif kind == "get":
                response = http.get(rng.choice(["/model", "/health", "/", "/predict"]))
            else:
                response = http.request(rng.choice(["PUT", "DELETE"]), "/predict", content=body)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500 or response.status_code == 503, response.text
            if response.status_code >= 400 and kind != "unknown":
                assert "error" in response.json() or "detail" in response.json(), response.text
        assert http.get("/health").json() == {"status": "ok"}
    assert sum(statuses.values()) == 80 and any(s >= 400 for s in statuses), statuses


def test_metrics_in_prometheus_text_format(onnx_model, texture):
    from prometheus_client.parser import text_string_to_metric_families

    files = sorted((texture / "test" / "good").glob("*.png"))[:3]
    with TestClient(create_app(onnx_model)) as c:
        verdicts = [c.post("/predict", content=png(p)).json()["results"][0] for p in files]
        c.post("/predict", content=b"not an image")
        text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counted = {s.labels["verdict"]: s.value for s in families["defectscope_verdicts"].samples
               if s.name.endswith("_total")}  # fmt: skip
    failed = sum(v["is_anomalous"] for v in verdicts)
    assert counted.get("fail", 0) == failed and counted.get("pass", 0) == 3 - failed
    totals = [s for s in families["defectscope_requests"].samples if s.name.endswith("_total")]
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in totals}
    assert requests[("/predict", "200")] == 3 and requests[("/predict", "415")] == 1
    scores = [s for s in families["defectscope_normalized_score"].samples
              if s.name.endswith("_count")]  # fmt: skip
    assert scores[0].value == 3
    [info] = families["defectscope_model_info"].samples
    assert (
        info.labels["model_sha256"] == verdicts and False or len(info.labels["model_sha256"]) == 64
    )
    [brightness] = families["defectscope_brightness_shift_sigmas"].samples
    assert np.isfinite(brightness.value) and abs(brightness.value) < 10  # test parts like training


def test_feedback_is_stored_only_for_judged_images(onnx_model, texture, tmp_path):
    import json

    good, other = sorted((texture / "test" / "good").glob("*.png"))[:2]
    with TestClient(create_app(onnx_model)) as off:
        answer = off.post(
            "/feedback", files={"image": ("a.png", png(good))}, data={"label": "good"}
        )
        assert answer.status_code == 404 and "--feedback-dir" in answer.json()["error"]
    store = tmp_path / "feedback"
    with TestClient(create_app(onnx_model, feedback_dir=store)) as c:
        [judged] = c.post("/predict", files=[("files", ("a.png", png(good)))]).json()["results"]
        sha = c.get("/model").json()["model_sha256"]

        def send(image, **fields):
            return c.post("/feedback", files={"image": ("a.png", image)}, data=fields)

        assert send(png(good), label="maybe").status_code == 422
        never = send(png(other), label="good")
        assert never.status_code == 404 and "has not judged that image" in never.json()["error"]
        assert send(png(good), label="good", score="1e9").status_code == 409
        assert send(png(good), label="good", model_sha256="0" * 64).status_code == 409
        saved = send(png(good), label="defective", score=str(judged["score"]), model_sha256=sha)
        assert saved.status_code == 200, saved.text
        case = saved.json()["stored"]
        assert case["image_sha256"] == judged["image_sha256"] and case["label"] == "defective"
        assert case["escape"] == (judged["verdict"] == "pass") and not case["false_alarm"]
        assert (store / case["image"]).read_bytes() == png(good)
        assert c.get("/feedback").json()["cases"] == [case]
    lines = (store / "feedback.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [case]


@pytest.mark.slow
def test_a_hot_swap_under_eight_clients_fails_no_request(onnx_model, texture, tmp_path):
    """Feedback says a flagged part is good; POST /model/update folds it into the model file
    and swaps the new model in while 8 loopback clients keep sending: every request succeeds,
    and the taught part passes afterwards."""
    import shutil
    import threading

    import httpx

    run = Path(shutil.copytree(onnx_model.parent, tmp_path / "run"))
    (run / "model.onnx").unlink()
    others = sorted((texture / "test" / "good").glob("*.png"))
    part = np.asarray(Image.open(others[0]).convert("RGB")).copy()
    part[20:26, 8:56] = 255  # a bright scratch the model has never seen
    taught = tmp_path / "scratched.png"
    Image.fromarray(part).save(taught)
    with running_server(run, feedback_dir=tmp_path / "feedback") as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=60) as http:
            [before] = http.post("/predict", content=png(taught)).json()["results"]
            assert before["verdict"] == "fail"
            sha = http.get("/model").json()["model_sha256"]
            stored = http.post(
                "/feedback", files={"image": ("t.png", png(taught))}, data={"label": "good"}
            )
            assert stored.status_code == 200, stored.text
        failures, codes, stop = [], [], threading.Event()

        def client(k: int) -> None:
            deadline = time.monotonic() + 60
            with httpx.Client(base_url=base, timeout=60) as own:
                for i in range(200):  # bounded in count and time
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    try:
                        r = own.post("/predict", content=png(others[(k + i) % len(others)]))
                        codes.append(r.status_code)
                        if r.status_code != 200:
                            failures.append(r.text)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        with httpx.Client(base_url=base, timeout=120) as http:
            swapped = http.post("/model/update")
            assert swapped.status_code == 200, swapped.text
            assert swapped.json()["added"] == 1 and swapped.json()["model_sha256"] != sha
            time.sleep(1.0)
            stop.set()
            for t in threads:
                t.join(timeout=90)
            assert failures == [] and len(codes) > 16
            [after] = http.post("/predict", content=png(taught)).json()["results"]
            assert after["score"] < before["score"] and after["verdict"] == "pass"
            assert http.get("/model").json()["model_sha256"] == swapped.json()["model_sha256"]
            assert swapped.json()["model_sha256"] in http.get("/metrics").text
            again = http.post("/model/update").json()  # nothing new to fold
            assert again["added"] == 0
    assert (run / "model.previous.safetensors").is_file()
