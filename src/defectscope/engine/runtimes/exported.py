"""The whole pipeline as one ONNX file: writing it (:func:`export_onnx`, needs torch) and running
it (:class:`ExportedModel`: onnxruntime, numpy and Pillow only, no torch).

The file takes ``images``: uint8 ``(B, H, W, 3)`` RGB at the model's input shape, and gives
``scores (B,)`` and ``maps (B, H, W)`` float32. Its ONNX metadata (key ``defectscope``) is a
JSON object with the threshold, input shape and layout, the colour scale, the detector and its
config, and the SHA-256 of the model file it came from.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from defectscope.atomic import replacing
from defectscope.data.loader import ImageInput
from defectscope.digest import file_sha256
from defectscope.engine.rules.operating import (
    check_fit_info,
    check_threshold_source,
    checked_threshold,
)
from defectscope.engine.rules.record import FitInfo
from defectscope.engine.runtimes.onnx_session import run_micro_batches, session_options
from defectscope.engine.scoring.scorer import Scorer
from defectscope.errors import ConfigError, ModelFileError

METADATA_KEY = "defectscope"
#: the fit record's fields an export keeps: what scoring, drawing and the checks need
EXPORTED_FIELDS = (
    "colour_scale",
    "score_scale",
    "threshold_on_map",
    "threshold_source",
    "intensity",
    "formats",
    "bit_depth",
)
EXPORT_FORMAT = "defectscope-onnx"
#: 2: the graph and metadata carry a SHA-256 (``defectscope_sha256``), checked on load
EXPORT_VERSION = 2
#: the metadata key of the SHA-256 over the graph and the ``defectscope`` metadata
DIGEST_KEY = "defectscope_sha256"


def export_digest(graph_bytes: bytes, meta_text: str) -> str:
    """SHA-256 over an exported file's serialised graph and its metadata text: an edited
    threshold, a zeroed weight or a swapped node changes it."""
    digest = hashlib.sha256(hashlib.sha256(graph_bytes).digest())
    digest.update(meta_text.encode())
    return digest.hexdigest()


#: ONNX files are one protobuf message, which cannot exceed 2 GiB
MAX_ONNX_BYTES = 1_900_000_000
#: exported and PyTorch outputs must agree within this relative tolerance
PARITY_RTOL = 1e-3
#: an int8 export and its model: the same int8 graph, but the lit images it quantizes are
#: computed by the traced graph, not numpy, so a value on a rounding step may land one step
#: apart (PatchCore's scores agree to about 1e-5, PaDiM's, whose Mahalanobis distance
#: amplifies such steps, to about 1e-2); a wrong or damaged graph is far outside this
INT8_PARITY_RTOL = 0.05


def export_onnx(detector: Any, path: str | Path) -> Path:
    """Write the fitted ``detector``'s whole pipeline to one ONNX file; returns its path.

    The exported graph is checked against PyTorch on a probe batch before the file is kept.
    """
    import onnx
    import torch

    from defectscope.version import __version__

    detector.check_fitted()
    used = detector.fit_info_.precision_used
    int8 = _int8_graph(detector)
    if used != "fp32" and int8 is None:
        why = (
            "ONNX Runtime on a CPU runs no bf16 graph"
            if used == "bf16"
            else "it was loaded without its int8 graph: load it with the default runtime"
        )
        warnings.warn(
            f"this model scores its features in {used}; the exported file computes them in "
            f"fp32 ({why}), so its scores may differ slightly from the model's",
            stacklevel=2,
        )
    module = detector.torch_module()
    height, width = detector.input_shape
    state_bytes = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    if state_bytes > MAX_ONNX_BYTES:
        raise ConfigError(
            f"this model holds {state_bytes / 1e9:.1f} GB of tensors, over ONNX's 2 GB limit for "
            "one file; export a smaller configuration (fewer n_features, a smaller backbone)"
        )

    class Uint8Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = module

        def forward(self, images: torch.Tensor):
            x = images.permute(0, 3, 1, 2).float() / 255.0
            scores, maps = self.module(x)
            return scores, maps

    wrapper = Uint8Pipeline().eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    with replacing(path) as tmp:
        if int8 is not None:  # the same pipeline around the model's own int8 feature graph
            graph = _with_int8_features(module, int8, (height, width))
        else:
            graph = _traced(wrapper, example, ["images"], ["scores", "maps"])
        record = detector.fit_info_.to_dict()
        meta = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "defectscope_version": __version__,
            "detector": detector.name,
            "threshold": detector.threshold_,
            "image_size": width,
            "input_shape": [height, width],
            "input": "images: uint8 (batch, height, width, 3) RGB, resized to input_shape",
            "outputs": "scores: float32 (batch,); maps: float32 (batch, height, width)",
            **{k: record.get(k) for k in EXPORTED_FIELDS},
            "precision": _exported_precision(record.get("precision"), int8 is not None),
            "config": detector.config_.to_dict(),
            "model_sha256": (
                file_sha256(detector.model_file_)
                if getattr(detector, "model_file_", None)
                else None
            ),
        }
        text = json.dumps(meta)
        entry = graph.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, text
        entry = graph.metadata_props.add()
        entry.key = DIGEST_KEY
        entry.value = export_digest(graph.graph.SerializeToString(), text)
        onnx.save(graph, tmp)
        if int8 is not None:  # against the model itself, which runs the same int8 graph
            reference = detector.score_batch
            _check_parity(reference, tmp, (height, width), INT8_PARITY_RTOL)
        else:
            _check_parity(_torch_outputs(wrapper), tmp, (height, width))
    return path


def exported_precision(detector: Any) -> str:
    """The precision an export of the fitted ``detector`` computes its features in: int8 where
    the model scores in int8 and holds its int8 graph, else fp32."""
    return "int8" if _int8_graph(detector) is not None else "fp32"


def _int8_graph(detector: Any) -> bytes | None:
    """The int8 feature graph an export of ``detector`` carries, or None."""
    if detector.fit_info_.precision_used != "int8":
        return None
    return getattr(
        getattr(getattr(detector, "module_", None), "embedding", None), "int8_graph", None
    )


def _traced(module, example, inputs: list[str], outputs: list[str]):
    """``module`` traced on ``example`` into an ONNX model (opset 17, the batch axis dynamic)."""
    import io

    import onnx
    import torch

    buffer = io.BytesIO()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings on shape branches, constant here
        torch.onnx.export(
            module.eval(),
            (example,),
            buffer,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes={n: {0: "batch"} for n in (*inputs, *outputs)},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def _with_int8_features(module, int8_graph: bytes, shape: tuple[int, int]):
    """The exported pipeline as three graphs joined: uint8 images -> lit float images (traced),
    the model's int8 feature graph (as the fit quantized it), features -> scores and maps
    (the module traced with its embedding and lighting correction taken out)."""
    import copy

    import onnx
    import torch
    from onnx import compose

    height, width = shape
    head = module.plain()  # no fast versions: the head runs as traced
    head._modules = dict(head._modules)  # its own submodules: the model's are untouched
    illumination = copy.deepcopy(module.illumination)
    head.embedding = torch.nn.Identity()
    head.illumination = torch.nn.Identity()

    class Lit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.illumination = illumination

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return self.illumination(images.permute(0, 3, 1, 2).float() / 255.0)

    lit = Lit()
    example = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    with torch.no_grad():
        features = module.embedding(lit(example))
    parts = [
        _traced(lit, example, ["images"], ["lit"]),
        onnx.load_from_string(int8_graph),
        _traced(head, features, ["features"], ["scores", "maps"]),
    ]
    for part in parts:
        del part.metadata_props[:]
    ir = max(part.ir_version for part in parts)
    for part in parts:
        part.ir_version = ir
    pre = compose.add_prefix(parts[0], "lit/", rename_inputs=False)
    quantized = compose.add_prefix(parts[1], "int8/")
    post = compose.add_prefix(parts[2], "head/", rename_outputs=False)
    joined = compose.merge_models(pre, quantized, io_map=[("lit/lit", "int8/images")])
    joined = compose.merge_models(joined, post, io_map=[("int8/features", "head/features")])
    used = {name for node in joined.graph.node for name in node.input}
    kept = [init for init in joined.graph.initializer if init.name in used]
    del joined.graph.initializer[:]
    joined.graph.initializer.extend(kept)  # the quantizer leaves constants no node reads
    return joined


def _torch_outputs(wrapper):
    """uint8 images -> ``(scores, maps)`` numpy of a PyTorch pipeline."""

    def run(batch: np.ndarray):
        import torch

        with torch.inference_mode():
            return tuple(t.numpy() for t in wrapper(torch.from_numpy(batch)))

    return run


def _exported_precision(model: dict[str, Any] | None, int8: bool = False) -> dict[str, Any]:
    """The precision record of an exported file: fp32 features, or int8 where the model's own
    int8 graph is in it (said, with the model's own precision, where they differ)."""
    used = (model or {}).get("used", "fp32")
    if used == "fp32" or int8:
        return {"requested": (model or {}).get("requested", "fp32"), "used": used}
    return {
        "requested": used,
        "used": "fp32",
        "reason": f"the model scores {used} features; its export computes them in fp32",
    }


def _check_parity(reference, file: str, shape: tuple[int, int], rtol: float = PARITY_RTOL) -> None:
    """RuntimeError unless the file's outputs on a random probe batch are ``reference``'s
    (uint8 images -> ``(scores, maps)``) within ``rtol`` of their largest value."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, size=(2, *shape, 3), dtype=np.uint8)
    want_scores, want_maps = reference(probe)
    session = ort.InferenceSession(file, session_options(), providers=["CPUExecutionProvider"])
    got_scores, got_maps = session.run(None, {"images": probe})
    scale = float(np.abs(want_maps).max()) or 1.0
    err = max(
        float(np.abs(got_scores - want_scores).max()) / (float(np.abs(want_scores).max()) or 1.0),
        float(np.abs(got_maps - want_maps).max()) / scale,
    )
    if err > rtol:
        raise RuntimeError(
            f"the exported graph disagrees with the model (relative error {err:.3g})"
        )


class ExportedModel(Scorer):
    """An exported ``.onnx`` file, run with ONNX Runtime, numpy and Pillow: no torch.

    Attributes:
        threshold_: the pass/fail threshold saved in the file.
        input_shape: ``(height, width)`` of the input.
        name: the detector it was exported from.
        metadata: everything the file says about itself.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 32,
        num_workers: int = 2,
        progress: bool = False,
        weights: str | None = None,
    ) -> None:
        import onnxruntime as ort

        from defectscope.engine.rules.settings import EngineOptions

        # the same type and range checks as a fit's options: `--batch-size 0` is one line here too
        EngineOptions(batch_size=batch_size, num_workers=num_workers, progress=progress)
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelFileError(f"exported model not found: {self.path}")
        try:
            self.session = ort.InferenceSession(
                str(self.path), session_options(), providers=["CPUExecutionProvider"]
            )
            props = self.session.get_modelmeta().custom_metadata_map
            raw = props.get(METADATA_KEY)
            meta = json.loads(raw) if raw else None
        except Exception as exc:  # noqa: BLE001 - every reader failure means a damaged file
            raise ModelFileError(
                f"{self.path} is not a readable ONNX model ({exc}); export it again"
            ) from exc
        if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
            raise ModelFileError(
                f"{self.path} is an ONNX file but not one written by `defectscope export`"
            )
        if meta.get("format_version") != EXPORT_VERSION:
            raise ModelFileError(
                f"{self.path} has export format version {meta.get('format_version')}; this "
                f"defectscope reads version {EXPORT_VERSION}: export it again"
            )
        self._check_digest(raw, props.get(DIGEST_KEY))
        try:
            self.threshold_ = checked_threshold(meta["threshold"])
            check_threshold_source(meta.get("threshold_source"), self.threshold_)
            check_fit_info(meta)
            self.input_shape = self._graph_input_shape(meta)
            self.name = meta["detector"]
            if not isinstance(self.name, str) or not self.name:
                raise ValueError(f"detector must be a name, got {self.name!r}")
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ModelFileError(f"{self.path} has damaged metadata ({exc})") from exc
        self.metadata = meta
        self.fit_info_ = FitInfo.from_dict(
            {k: meta.get(k) for k in (*EXPORTED_FIELDS, "precision")}
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.progress = progress

    def _graph_input_shape(self, meta: dict) -> tuple[int, int]:
        """``(height, width)``: the metadata's ``input_shape``, which must be the graph's own
        (an edited one would resize every image to a shape the graph refuses)."""
        shape = meta["input_shape"]
        dims = self.session.get_inputs()[0].shape
        if not (
            isinstance(shape, list)
            and len(shape) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in shape)
        ):
            raise ValueError(f"input_shape must be [height, width], got {shape!r:.80}")
        if len(dims) != 4 or list(dims[1:3]) != shape:
            raise ValueError(f"input_shape {shape} is not the graph's input {dims}")
        return shape[0], shape[1]

    def _check_digest(self, meta_text: str, recorded: str | None) -> None:
        """ModelFileError unless the graph and metadata hash to the digest stored with them."""
        import onnx

        try:
            graph = onnx.load(str(self.path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - every reader failure means a damaged file
            raise ModelFileError(f"{self.path} is not a readable ONNX model ({exc})") from exc
        if not recorded or export_digest(graph.graph.SerializeToString(), meta_text) != recorded:
            raise ModelFileError(
                f"{self.path}: its graph or metadata does not match the SHA-256 stored with it "
                "(edited or damaged after export); export it again"
            )

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, H, W, 3)`` uint8 -> ``(scores (B,), maps (B, H, W))``, in micro-batches."""
        scores, maps = run_micro_batches(self.session, batch)
        return scores, maps

    def _score_batches(
        self, images: list[ImageInput], desc: str
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray, np.ndarray]]:
        return self._decoded_batches(
            images, desc, self.run, self.batch_size, self.num_workers, self.progress
        )
