"""Where the feature extractor runs: eager PyTorch (the reference) or ONNX Runtime.

ONNX Runtime runs the same weights several times faster on a CPU than eager PyTorch (see
``benchmarks/README.md``). The graph is exported once, cached on disk under a key that covers
everything it depends on, and checked against PyTorch on a probe batch before it is used.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a module is exported or checked, never to run one
    import torch
    from torch import nn

from defectscope.atomic import temporary
from defectscope.engine.rules.settings import RUNTIMES
from defectscope.engine.runtimes.onnx_session import run_micro_batches, session_options
from defectscope.errors import ConfigError, unknown_name

log = logging.getLogger(__name__)
# Relative tolerance for the exported graph against PyTorch: float32 kernels reorder sums, so
# outputs differ in the last bits; a wrong export differs at the level of the values themselves.
EXPORT_RTOL = 1e-3


def cache_dir() -> Path:
    """``$DEFECTSCOPE_CACHE`` or ``~/.cache/defectscope``: where exported graphs are kept."""
    return Path(os.environ.get("DEFECTSCOPE_CACHE", Path.home() / ".cache" / "defectscope"))


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_runtime(name: str) -> str:
    """``auto`` -> ``onnxruntime`` when installed, else ``torch``; unknown names raise."""
    if name not in RUNTIMES:
        raise ConfigError(unknown_name("runtime", name, RUNTIMES))
    if name == "auto":
        return "onnxruntime" if onnxruntime_available() else "torch"
    if name == "onnxruntime" and not onnxruntime_available():
        raise ConfigError(
            "runtime 'onnxruntime' asked for but the onnxruntime package is not installed; "
            "pip install onnxruntime, or use --runtime torch"
        )
    return name


#: ONNX metadata key of what a cached graph was built from (see :func:`graph_metadata`)
GRAPH_METADATA_KEY = "defectscope-graph"


def cached_graph(key: str) -> Path:
    """Where the graph cached under ``key`` lives (it may not exist)."""
    return cache_dir() / "onnx" / f"{key}.onnx"


def graph_metadata(session) -> dict[str, Any] | None:
    """What the cached graph of ``session`` says it was built from (the ``meta`` given to
    :class:`OnnxModule` when it was exported), or None for graphs cached without it."""
    raw = session.get_modelmeta().custom_metadata_map.get(GRAPH_METADATA_KEY)
    return json.loads(raw) if raw else None


class OnnxModule:
    """Run an ``nn.Module`` of one image-batch input and one output through ONNX Runtime."""

    def __init__(
        self,
        module: nn.Module,
        input_shape: tuple[int, int],
        key: str,
        on_stage: Callable[[str], None] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> None:
        import onnxruntime as ort

        path = cached_graph(key)
        if not path.is_file():
            if on_stage is not None:
                on_stage("exporting the feature extractor to ONNX (once; cached)")
            _export(module, input_shape, path, meta)
        if on_stage is not None:
            on_stage("loading the ONNX feature extractor")
        self.session = ort.InferenceSession(
            str(path), session_options(), providers=["CPUExecutionProvider"]
        )
        self.path = path
        self._verify(module, input_shape)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(
            run_micro_batches(self.session, images.detach().contiguous().numpy())[0]
        )

    def _verify(self, module: nn.Module, input_shape: tuple[int, int]) -> None:
        import torch

        probe = torch.rand(2, 3, *input_shape, generator=torch.Generator().manual_seed(0))
        with torch.inference_mode():
            expected = module(probe)
        got = self(probe)
        scale = float(expected.abs().max()) or 1.0
        error = float((got - expected).abs().max())
        if got.shape != expected.shape or error > EXPORT_RTOL * scale:
            raise RuntimeError(
                f"the ONNX graph {self.path} disagrees with PyTorch (max error {error:.3g} for "
                f"values up to {scale:.3g}); delete it to re-export, or use --runtime torch"
            )


def _export(
    module: nn.Module, input_shape: tuple[int, int], path: Path, meta: dict[str, Any] | None
) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(1, 3, *input_shape)
    tmp = temporary(path)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            # The tracer warns about Python-level branches on shapes; they are constant here.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (example,),
                tmp,
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
                opset_version=17,
                dynamo=False,
            )
        if meta is not None:
            import onnx

            graph = onnx.load(tmp)
            entry = graph.metadata_props.add()
            entry.key, entry.value = GRAPH_METADATA_KEY, json.dumps(meta)
            onnx.save(graph, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.debug("exported feature extractor to %s", path)


def accelerator(runtime: str, on_stage: Callable[[str], None] | None = None):
    """The ``accelerate`` hook of :class:`~defectscope.models.base.Hooks` for ``runtime``:
    None for eager PyTorch, else a function that runs a module in ONNX Runtime (``on_stage``
    hears of the export and the loading)."""
    if resolve_runtime(runtime) == "onnxruntime":
        return lambda module, key, shape, meta=None: OnnxModule(module, shape, key, on_stage, meta)
    return None
