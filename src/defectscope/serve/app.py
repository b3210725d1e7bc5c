"""The HTTP service: one model loaded once, micro-batched predictions, an operator page.

Routes: ``GET /health`` (never needs a key), ``GET /model``, ``POST /predict`` and ``GET /``
(the page). Every bad request gets a 4xx with ``{"error": "..."}``, never a 500; a full queue gets
503 with ``Retry-After``. With an API key set, every route but ``/health`` needs it (header
``X-API-Key``, ``Authorization: Bearer KEY``, or ``?api_key=`` for the page). No route serves
files: the page is a string in :mod:`defectscope.serve.page`.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at run time.
import asyncio
import base64
import hashlib
import io
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from defectscope.errors import DataError, DefectscopeError
from defectscope.verdict import RULE, colour_scale_for, verdict_row


@dataclass(frozen=True)
class Limits:
    """What one request may send, and how the batcher shares the model."""

    max_upload_bytes: int = 20 * 1024 * 1024
    max_images: int = 16
    max_queue: int = 64
    max_batch: int = 8
    max_wait: float = 0.01
    #: decoded size of one image (width x height x channels x bytes per sample) at most
    max_decoded_bytes: int = 256 * 1024 * 1024
    #: seconds a client has to send a request's head, and then its whole body
    upload_timeout: float = 30.0
    #: open connections at most (more get 503): what slow clients can hold is bounded
    max_connections: int = 64


#: the image formats the service decodes: those of the CLI's suffixes, nothing else (Pillow
#: would otherwise hand EPS to Ghostscript)
FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "WEBP"})


def check_upload(name: str, data: bytes, max_decoded: int) -> None:
    """ApiError unless ``data`` is an image of an allowed format whose decoded size fits the
    budget, read from its header before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            fmt, (width, height), mode = image.format, image.size, image.mode
            frames = getattr(image, "n_frames", 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ApiError(415, f"{name}: not an image file this service reads ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise ApiError(413, f"{name}: decompression bomb: {exc}") from exc
    if fmt not in FORMATS:
        raise ApiError(
            415, f"{name}: {fmt} images are not accepted; send {', '.join(sorted(FORMATS))}"
        )
    if frames != 1:
        raise ApiError(422, f"{name}: {frames} frames (pages); send one image per file")
    samples = {"1": 1, "L": 1, "P": 1, "LA": 2, "RGB": 3, "YCbCr": 3, "RGBA": 4, "CMYK": 4}
    depth = 2 if mode.startswith("I;16") else 4 if mode in ("I", "F") or mode.startswith("I") else 1
    decoded = width * height * samples.get(mode, 4) * depth
    # the decoder also makes an RGB copy and a float copy: budget what they take too
    needed = decoded + width * height * 3 * 5
    if needed > max_decoded:
        raise ApiError(
            413,
            f"{name}: a {width}x{height} {mode} image needs about {needed >> 20} MB to decode; "
            f"the limit is {max_decoded >> 20} MB",
        )


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _status_of(error: DataError) -> int:
    text = str(error)
    if "not an image" in text:
        return 415
    if "over the limit" in text or "decompression bomb" in text:
        return 413
    return 422


def create_app(
    model: str | Path,
    *,
    api_key: str | None = None,
    limits: Limits = Limits(),
    feedback_dir: str | Path | None = None,
    learn: bool = False,
):
    """A FastAPI application serving ``model`` (a run folder, ``.safetensors`` or exported
    ``.onnx``: the ``.onnx`` file needs no torch); operator feedback is stored under
    ``feedback_dir`` (None: feedback is off). ``POST /model/update`` folds the good feedback
    into a ``.safetensors`` model and swaps it in while requests go on; ``learn`` does so after
    each good feedback."""
    from contextlib import asynccontextmanager

    from defectscope.data.images import decode_image
    from defectscope.engine.workflows.loading import load
    from defectscope.serve.batcher import MicroBatcher, QueueFull
    from defectscope.serve.page import PAGE
    from defectscope.version import __version__

    scorer = load(model, progress=False)
    height, width = scorer.input_shape
    # the first call builds sessions and caches; pay it now, not in the first request
    scorer.score([np.zeros((height, width, 3), dtype=np.uint8)])
    batcher = MicroBatcher(
        scorer, max_batch=limits.max_batch, max_wait=limits.max_wait, max_queue=limits.max_queue
    )
    identity = scorer.identity()
    on_map = scorer.threshold_on_map
    from defectscope.serve.monitor import LABELS, REMEMBERED, FeedbackStore, Judged, Metrics

    train_sizes = (scorer.fit_info_.formats or {}).get("sizes")
    metrics = Metrics(identity, __version__, scorer.training_intensity, train_sizes)
    judged = Judged()
    store = FeedbackStore(Path(feedback_dir)) if feedback_dir is not None else None
    routes = {"/predict", "/model", "/health", "/metrics", "/feedback", "/"}

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    # no /docs, /redoc or /openapi.json: they would answer without the key and load scripts
    # from a CDN; the routes are documented in the README
    app = FastAPI(
        title="defectscope",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        start = time.perf_counter()
        response = await call_next(request)
        route = request.url.path if request.url.path in routes else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - start)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault(
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; connect-src 'self'",
        )
        return response

    app.state.batcher = batcher
    app.state.scorer = scorer
    identities = {id(scorer): identity}
    updating = threading.Lock()

    def identity_of(used) -> dict[str, Any]:
        return identities.get(id(used)) or used.identity()

    def fold_feedback() -> dict[str, Any]:
        """Fold the stored good feedback not yet in the model into a fresh copy of it, save it
        (the previous version kept), and swap it in: the next batch is scored by it."""
        from defectscope.engine.persistence.files import keep_previous, model_path

        current = batcher.scorer
        if str(model).endswith(".onnx"):
            raise ApiError(409, "an exported .onnx model cannot learn: serve the model file")
        store_ = feedback_store()
        taught = {sha for entry in current.fit_info_.lineage or [] for sha in entry["added_sha256"]}
        cases = [c for c in store_.cases(limit=REMEMBERED) if c["label"] == "good"]
        new = {c["image_sha256"]: store_.folder / c["image"] for c in cases}
        paths = [path for sha, path in new.items() if sha not in taught]
        if not paths:
            return {"added": 0, "model_sha256": identity_of(current)["model_sha256"]}
        fresh = load(model, progress=False)
        try:
            entry = fresh.update(paths)
        except DefectscopeError as exc:
            raise ApiError(409, str(exc)) from exc
        file = model_path(model)
        keep_previous(file)
        fresh.save(file)
        fresh.score([np.zeros((height, width, 3), dtype=np.uint8)])  # warm, before the swap
        identities[id(fresh)] = fresh.identity()
        batcher.scorer = fresh  # atomic: the batches after this one use the new model
        app.state.scorer = fresh
        metrics.set_model(identities[id(fresh)])
        return {
            "added": entry["added"],
            "threshold_before": entry["threshold_before"],
            "threshold_after": entry["threshold_after"],
            "model_sha256": identities[id(fresh)]["model_sha256"],
        }

    def update_now() -> dict[str, Any]:
        if not updating.acquire(blocking=False):
            raise ApiError(409, "an update is already running; try again when it has finished")
        try:
            return fold_feedback()
        except OSError as exc:  # a full disk: the new version was not written, nothing swapped
            raise ApiError(
                507,
                f"the updated model could not be saved ({exc.strerror or exc}); the served "
                "model is unchanged",
            ) from exc
        finally:
            updating.release()

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        where = "; ".join(
            f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse({"error": f"invalid request: {where}"}, status_code=422)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("x-api-key") or request.query_params.get("api_key")
        auth = request.headers.get("authorization", "")
        if not given and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given or not secrets.compare_digest(given.encode(), api_key.encode()):
            raise ApiError(401, "missing or wrong API key (header X-API-Key)")

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/model")
    async def model_info(request: Request):
        check_key(request)
        scorer = batcher.scorer
        config = getattr(scorer, "config_", None)
        return {
            **identity_of(scorer),
            "defectscope_version": __version__,
            "image_size": width,
            "input_shape": [height, width],
            "colour_scale": scorer.colour_scale,
            "score_scale": scorer.fit_info_.score_scale,
            "threshold_on_map": on_map,
            "verdict_rule": RULE,
            # fit --auto: every candidate tried and why this one won (None for other fits)
            "auto": scorer.fit_info_.auto,
            # the features' arithmetic (an exported file's is fp32)
            "precision": scorer.fit_info_.precision_used,
            "config": config.to_dict() if config is not None else scorer.metadata.get("config"),
            "limits": limits.__dict__,
        }

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request):
        check_key(request)
        return PAGE

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_upload_bytes:
            raise ApiError(
                413,
                f"request of {int(declared):,} bytes is over the limit of "
                f"{limits.max_upload_bytes:,}",
            )
        from starlette.requests import ClientDisconnect

        chunks, total = [], 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.upload_timeout
        stream = request.stream().__aiter__()
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), deadline - loop.time())
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError as exc:
                    raise ApiError(
                        408,
                        f"the upload took longer than {limits.upload_timeout:g} s "
                        f"({total:,} bytes arrived); send it again",
                    ) from exc
                total += len(chunk)
                if total > limits.max_upload_bytes:
                    raise ApiError(
                        413, f"request is over the limit of {limits.max_upload_bytes:,} bytes"
                    )
                chunks.append(chunk)
        except ClientDisconnect as exc:  # nobody is left to read an answer: no traceback
            raise ApiError(400, "the client disconnected during the upload") from exc
        return b"".join(chunks)

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        body = await read_body(request)
        kind = request.headers.get("content-type", "")
        if kind.startswith("multipart/form-data"):
            request._body = body  # parse what was read (and limited) above
            try:
                form = await request.form(max_files=limits.max_images, max_fields=100)
            except Exception as exc:  # noqa: BLE001 - a malformed form is the client's error
                if "too many files" in str(exc).lower():
                    raise ApiError(
                        413,
                        f"more than {limits.max_images} images in one request; the limit is "
                        f"{limits.max_images}",
                    ) from exc
                raise ApiError(400, f"malformed multipart body: {exc}") from exc
            files = [
                (v.filename or k, await v.read())
                for k, v in form.multi_items()
                if hasattr(v, "read")
            ]
        elif body:
            files = [(request.query_params.get("name") or "upload", body)]
        else:
            files = []
        if not files:
            raise ApiError(
                400, "no image in the request: send multipart files, or an image as the raw body"
            )
        if len(files) > limits.max_images:
            raise ApiError(
                413, f"{len(files)} images in one request; the limit is {limits.max_images}"
            )
        return files

    def decode(name: str, data: bytes) -> np.ndarray:
        check_upload(name, data, limits.max_decoded_bytes)
        try:
            return decode_image(data, None, name, batcher.scorer.bit_depth)
        except DataError as exc:
            raise ApiError(_status_of(exc), str(exc)) from exc

    def describe(
        scorer, name, image, score, amap, threshold, want_overlay, want_heatmap
    ) -> dict[str, Any]:
        from defectscope.report.visualize import overlay as heatmap
        from defectscope.report.visualize import png_bytes, verdict_overlay

        height, width = image.shape[:2]
        normalized = float(scorer.normalize([score], threshold)[0])
        row, regions = verdict_row(score, normalized, threshold, amap, (width, height), on_map)
        out = {"name": name, **row, "width": width, "height": height}
        scale = colour_scale_for(scorer.colour_scale, amap, threshold)
        pictures = {
            "heatmap_png_base64": want_heatmap and (lambda: heatmap(image, amap, *scale)),
            "overlay_png_base64": want_overlay
            and (lambda: verdict_overlay(image, amap, scale, row, regions, on_map, name)),
        }
        for key, draw in pictures.items():
            if draw:
                out[key] = base64.b64encode(png_bytes(draw())).decode("ascii")
        return out

    @app.post("/predict")
    async def predict(
        request: Request,
        overlay: bool = False,
        heatmap: bool = False,
        threshold: float | None = None,
    ):
        check_key(request)
        if threshold is not None and not np.isfinite(threshold):
            raise ApiError(422, "threshold must be a finite number")
        files = await uploads(request)
        images = [await run_in_threadpool(decode, name, data) for name, data in files]
        try:
            future = batcher.submit(images)
        except QueueFull as exc:
            raise ApiError(503, f"busy: {exc}; retry shortly", {"Retry-After": "1"}) from exc
        try:
            scores, maps, used = await asyncio.wrap_future(future)
        except DefectscopeError as exc:
            raise ApiError(422, str(exc)) from exc
        t = float(used.threshold_ if threshold is None else threshold)
        results = [
            await run_in_threadpool(describe, used, name, image, s, m, t, overlay, heatmap)
            for (name, _), image, s, m in zip(files, images, scores, maps)
        ]
        identity = identity_of(used)
        for (_, data), image, result in zip(files, images, results):
            digest = hashlib.sha256(data).hexdigest()
            result["image_sha256"] = digest
            judged.remember(
                digest,
                {
                    key: result[key]
                    for key in ("name", "score", "threshold", "verdict", "normalized_score")
                }
                | {"model_sha256": identity["model_sha256"]},
            )
            metrics.judged(image, result["is_anomalous"], result["normalized_score"])
        return {
            "results": results,
            "model_sha256": identity["model_sha256"],
            "detector": identity["detector"],
        }

    @app.get("/metrics")
    async def prometheus(request: Request):
        from prometheus_client import CONTENT_TYPE_LATEST

        check_key(request)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    def feedback_store() -> FeedbackStore:
        if store is None:
            raise ApiError(404, "feedback is off: start the service with --feedback-dir DIR")
        return store

    @app.post("/feedback")
    async def feedback(request: Request):
        """An operator's word on a judged image: multipart ``image`` (the bytes that were
        sent to /predict), ``label`` (good or defective) and, optionally, the ``score`` and
        ``model_sha256`` it was judged with (checked against what this service answered)."""
        check_key(request)
        cases = feedback_store()
        request._body = await read_body(request)
        try:
            form = await request.form(max_files=1, max_fields=10)
        except Exception as exc:  # noqa: BLE001 - a malformed form is the client's error
            raise ApiError(400, f"send multipart fields image and label ({exc})") from exc
        label = form.get("label")
        if label not in LABELS:
            raise ApiError(422, f"label must be one of {', '.join(LABELS)}, got {label!r:.40}")
        upload = form.get("image")
        if not hasattr(upload, "read"):
            raise ApiError(400, "no image: send the judged image as the multipart field image")
        data = await upload.read()
        record = judged.get(hashlib.sha256(data).hexdigest())
        if record is None:
            raise ApiError(
                404,
                "this service has not judged that image (or no longer remembers it: it keeps "
                f"the last {len(judged)} of at most {REMEMBERED:,}); send it to /predict first",
            )
        given_sha = form.get("model_sha256")
        if given_sha not in (None, "", record["model_sha256"]):
            raise ApiError(409, "that verdict came from another model than the one served")
        given_score = form.get("score")
        if given_score not in (None, ""):
            try:
                score = float(given_score)
            except ValueError as exc:
                raise ApiError(422, f"score must be a number, got {given_score!r:.40}") from exc
            if not np.isclose(score, record["score"], rtol=1e-4, atol=1e-6):
                raise ApiError(
                    409, f"that image was judged with score {record['score']:.6g}, not {score:.6g}"
                )
        suffix = SUFFIXES.get(image_format(data), ".png")
        case = await run_in_threadpool(cases.add, data, suffix, label, record)
        metrics.feedback.labels(label).inc()
        if learn and label == "good" and not updating.locked():
            # folded in the background; a feedback that arrives meanwhile waits for the next
            asyncio.get_running_loop().run_in_executor(None, _quietly(update_now))
        return {"stored": case}

    @app.post("/model/update")
    async def model_update(request: Request):
        """Fold the good feedback not yet in the model into it and swap the new version in,
        while requests go on being served."""
        check_key(request)
        return await run_in_threadpool(update_now)

    @app.get("/feedback")
    async def feedback_list(request: Request):
        check_key(request)
        return {"cases": feedback_store().cases()}

    return app


def _quietly(fn):
    """``fn`` for a background thread: a refusal (an update already running) is not an
    error there, and anything else is logged, never lost silently."""

    def run():
        try:
            fn()
        except ApiError:
            pass
        except Exception:  # noqa: BLE001 - a background update must not die unseen
            logging.getLogger(__name__).exception("background model update failed")

    return run


#: file suffixes of the formats the service accepts (feedback images keep theirs)
SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "WEBP": ".webp"}


def image_format(data: bytes) -> str | None:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.format
    except Exception:  # noqa: BLE001 - it was decoded once already; any failure: default
        return None


def server_config(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    limits: Limits = Limits(),
    quiet: bool = False,
) -> Any:
    """The uvicorn configuration ``serve`` runs ``app`` with: the API key redacted from access
    logs, idle connections closed after 5 s, at most ``limits.max_connections`` open, and a
    deadline for each request's head (:mod:`defectscope.serve.guard`) and body."""
    import copy

    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    from defectscope.serve.guard import guarded_h11

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact"] = {"()": RedactKey}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact")
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning" if quiet else "info",
        access_log=not quiet,
        log_config=config,
        timeout_keep_alive=5,
        limit_concurrency=limits.max_connections,
        http=guarded_h11(limits.upload_timeout),
    )


def serve(
    model: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    limits: Limits = Limits(),
    quiet: bool = False,
    feedback_dir: str | Path | None = None,
    learn: bool = False,
) -> None:
    """Load ``model`` and serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(model, api_key=api_key, limits=limits, feedback_dir=feedback_dir, learn=learn)
    config = server_config(app, host=host, port=port, limits=limits, quiet=quiet)
    uvicorn.Server(config).run()


class RedactKey(logging.Filter):
    """Access-log lines never show an API key given as ``?api_key=``."""

    PATTERN = re.compile(r"(api_key=)[^&\s\"]*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(
                self.PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        return True
