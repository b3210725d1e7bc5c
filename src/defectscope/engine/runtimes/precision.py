"""The feature extractor's arithmetic: fp32, int8 or bf16 (the engine option ``precision``).

What the lean path runs is the backbone's cached fp32 ONNX graph; on a CPU with VNNI or AMX
that graph can run faster in lower precision:

- ``int8``: the graph statically quantized by ONNX Runtime (QDQ, per-channel int8 weights,
  int8 activations whose ranges are calibrated, MinMax, on the fit's first training images after
  the lighting correction). The quantized graph depends on those images, so it is saved in the
  model file (a uint8 tensor, under the file's checksum like every other) and read back from it.
- ``bf16``: the fp32 graph compiled by OpenVINO with its bf16 inference hint (AMX tiles or
  AVX-512 BF16). OpenVINO is not a dependency of defectscope: ``pip install openvino``.
- ``auto``: the fastest of those the CPU and the installed runtimes offer, kept only where its
  scores agree with fp32 on the fit's own out-of-fold good images (:func:`agreement`); else
  fp32, and the fit record says why.

The detector's statistics or memory bank are always built from fp32 features; the precision is
that of the features every image is scored with afterwards (the out-of-fold scores that set the
threshold included, so the threshold belongs to the precision the model scores in). The CPU's
abilities are read from its flags (``/proc/cpuinfo``), never guessed. onnxruntime and numpy
only (OpenVINO where installed).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.engine.runtimes.onnx_session import run_micro_batches, session_options
from defectscope.results import comparison_text

log = logging.getLogger(__name__)

#: tried by ``auto``, fastest first (measured on a Xeon with AMX: benchmarks/README.md)
AUTO_ORDER = ("bf16", "int8")
#: the model-file tensor that holds the quantized graph of an int8 model
INT8_TENSOR = "precision_int8_graph"
#: training images the int8 activation ranges are calibrated on
CALIBRATION_IMAGES = 32
#: out-of-fold images ``auto`` compares fp32 and a lower precision on
AGREEMENT_IMAGES = 64
#: ``auto`` keeps a lower precision only where its scores of the out-of-fold good images rank
#: them as fp32 does (Spearman's rho at least this) ...
MIN_RANK_CORRELATION = 0.99
#: ... and move them by at most this fraction of the fp32 scores' spread (the median absolute
#: difference over their interquartile range). Both are set on principle (a lower precision
#: must keep the good parts' order and place), not fitted to any category's test split
MAX_SHIFT = 0.05
#: the CPU flags that make each precision fast (Linux names)
FLAGS = {
    "int8": ("avx512_vnni", "avx_vnni", "amx_int8"),
    "bf16": ("amx_bf16", "avx512_bf16"),
}

Features = Callable[[np.ndarray], np.ndarray]


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel reports them (empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def unavailable(precision: str, flags: frozenset[str] | None = None) -> str | None:
    """Why ``precision`` cannot run here (None where it can)."""
    if precision == "fp32":
        return None
    flags = cpu_flags() if flags is None else flags
    if not any(f in flags for f in FLAGS[precision]):
        return f"this CPU has none of {', '.join(FLAGS[precision])}"
    if precision == "bf16" and not openvino_available():
        return "bf16 runs in OpenVINO, which is not installed (pip install openvino)"
    return None


def quantize_int8(graph: Path, calibration: np.ndarray) -> bytes:
    """The fp32 feature graph at ``graph`` quantized to int8 (QDQ, per-channel weights, MinMax
    activation ranges of ``calibration``: float32 ``(B, 3, H, W)`` images as the graph takes
    them), as the bytes of an ONNX file that keeps the graph's metadata."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"images": calibration[i : i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory(prefix="defectscope-int8-") as tmp, _quiet_root_logger():
        out = Path(tmp) / "int8.onnx"
        quantize_static(
            str(graph),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        model = onnx.load(str(out))
    source = onnx.load(str(graph), load_external_data=False)
    del model.metadata_props[:]
    model.metadata_props.extend(source.metadata_props)  # the graph's metadata (feature size)
    return model.SerializeToString()


@contextlib.contextmanager
def _quiet_root_logger():
    """ONNX Runtime's quantization tools log advice and every scale they adjust on the root
    logger (which, without a handler, would also configure logging for the whole process):
    silenced while they run."""
    root = logging.getLogger()
    level, handler = root.level, logging.NullHandler()
    root.addHandler(handler)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def features(precision: str, graph: Path, int8_graph: bytes | None = None) -> Features:
    """The feature function of ``precision``: float32 images ``(B, 3, H, W)`` -> features.
    ``graph``: the cached fp32 graph; ``int8_graph``: the quantized one (for int8)."""
    if precision == "bf16":
        import openvino as ov

        from defectscope.engine.runtimes.onnx_session import thread_limit

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "bf16"}
        if thread_limit():
            config["INFERENCE_NUM_THREADS"] = thread_limit()
        compiled = ov.Core().compile_model(str(graph), "CPU", config)
        request = compiled.create_infer_request()
        lock = threading.Lock()  # one request, which is not safe to share between threads

        def run(images: np.ndarray) -> np.ndarray:
            with lock:
                return np.array(request.infer({0: images})[0], dtype=np.float32)

        return run
    import onnxruntime as ort

    source: Any = int8_graph if precision == "int8" else str(graph)
    if precision == "int8" and int8_graph is None:
        raise ValueError("an int8 model needs its quantized graph")
    session = ort.InferenceSession(source, session_options(), providers=["CPUExecutionProvider"])
    return lambda images: run_micro_batches(session, images)[0]


def agreement(reference: np.ndarray, other: np.ndarray) -> dict[str, Any]:
    """How far ``other`` scores (a lower precision) are from the fp32 ``reference`` scores of
    the same good images: Spearman's rho, the median shift over the reference's interquartile
    range, and whether both are within :data:`MIN_RANK_CORRELATION` / :data:`MAX_SHIFT`."""
    reference = np.asarray(reference, dtype=np.float64)
    other = np.asarray(other, dtype=np.float64)
    ok = np.isfinite(reference) & np.isfinite(other)
    reference, other = reference[ok], other[ok]
    if len(reference) < 3:
        return {
            "images": int(len(reference)),
            "rank_correlation": None,
            "shift": None,
            "agrees": False,
        }
    ranks = [np.argsort(np.argsort(v, kind="stable"), kind="stable") for v in (reference, other)]
    rho = float(np.corrcoef(*ranks)[0, 1]) if np.ptp(ranks[0]) else 1.0
    q75, q25 = np.percentile(reference, [75, 25])
    spread = float(q75 - q25) or float(np.abs(reference).mean()) or 1.0
    shift = float(np.median(np.abs(other - reference)) / spread)
    return {
        "images": int(len(reference)),
        "rank_correlation": round(rho, 4),
        "shift": round(shift, 4),
        "agrees": bool(rho >= MIN_RANK_CORRELATION and shift <= MAX_SHIFT),
    }


class PrecisionChoice:
    """A fit's side of the ``precision`` option: the lower-precision features built once the
    fit has its first images (:meth:`prepare`), then compared with fp32 on the first
    out-of-fold images (:meth:`decide`): under ``auto`` the fastest that agrees is used, an
    explicitly requested one is used whatever the comparison says, with a warning where its
    scores disagree. Every out-of-fold score after that is made in the precision used.
    :meth:`record` is what the fit record keeps. ``embedding``: the lean fitter's
    :class:`~defectscope.models.lean.LeanEmbedding` (None on the PyTorch path, which runs fp32)."""

    def __init__(self, requested: str, embedding: Any, target: float) -> None:
        self.requested = requested
        self.embedding = embedding
        self.target = target
        self.used = "fp32"
        self.notes: dict[str, Any] = {}
        self._built: dict[str, tuple[Features, bytes | None]] = {}

    @property
    def pending(self) -> bool:
        """Whether lower precisions wait to be compared with fp32 (:meth:`decide`)."""
        return bool(self._built)

    def prepare(self, first: np.ndarray) -> None:
        """Build the lower precisions to compare from the fit's first uint8 images ``first``
        (the int8 calibration), or record why none can run."""
        if self.requested == "fp32":
            return
        if self.embedding is None or getattr(self.embedding, "graph", None) is None:
            self._refuse(
                "lower precisions run on the torch-free path only (PaDiM or PatchCore, runtime "
                "onnxruntime, unsharded, illumination none, gain or standardize)"
            )
            return
        wanted = AUTO_ORDER if self.requested == "auto" else (self.requested,)
        reasons = {p: unavailable(p) for p in wanted}
        runnable = [p for p in wanted if reasons[p] is None]
        if not runnable:
            named = len(wanted) > 1  # auto names each precision it could not run
            self._refuse("; ".join(f"{p}: {reasons[p]}" if named else reasons[p] for p in wanted))
            return
        calibration = self.embedding.inputs(first[:CALIBRATION_IMAGES], self.target)
        for p in runnable:
            int8 = quantize_int8(self.embedding.graph, calibration) if p == "int8" else None
            self._built[p] = (features(p, self.embedding.graph, int8), int8)
        if self.requested == "auto":
            self.notes["unavailable"] = {p: r for p, r in reasons.items() if r is not None}

    def decide(self, score: Callable[[], np.ndarray]) -> None:
        """``score()`` (the scores of a fold's first out-of-fold images under the embedding as
        it is set) once in fp32 and once per lower precision, fastest first; ``auto`` keeps the
        first that agrees (else fp32), an explicit request keeps its own."""
        fp32 = self.embedding.features
        reference = score()
        compared = {}
        for p, (run, int8) in self._built.items():
            self.embedding.use(run, p, int8)
            compared[p] = agreement(reference, score())
            self.embedding.use(fp32, "fp32")
            if compared[p]["agrees"] or self.requested != "auto":
                self._switch(p)
                break
        self._built.clear()
        self.notes["agreement"] = compared
        if self.requested != "auto" and not compared[self.requested]["agrees"]:
            log.warning(
                "precision %s: its scores of out-of-fold good images disagree with fp32's (%s); "
                "its AUROC may be lower than fp32's (precision auto would keep fp32)",
                self.requested,
                comparison_text(compared),
            )
        elif self.used == "fp32":
            log.info(
                "precision auto: no lower precision agrees with fp32 (%s); fp32",
                comparison_text(compared),
            )

    def record(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, **self.notes}

    def _switch(self, p: str) -> None:
        run, int8 = self._built[p]
        self.embedding.use(run, p, int8)
        self.used = p

    def _refuse(self, reason: str) -> None:
        self.notes["reason"] = reason
        line = f"precision {self.requested} cannot run here: {reason}; using fp32"
        if line not in _SAID:  # once per process (auto refits, Ray tasks)
            _SAID.add(line)
            log.warning(line)


_SAID: set[str] = set()
