"""ONNX Runtime sessions as every defectscope session runs them: thread count, no memory
arena, no spinning, and images fed a few at a time (used by exported files, the cached feature
graphs and the lean path; onnxruntime and numpy only)."""

from __future__ import annotations

import os

import numpy as np

# ONNX Runtime is fed this many images per call, whatever the caller's batch (every session of
# defectscope's). Measured for efficientnet_lite0 at 256x256 on the 2-core CPU (img/s, median
# of 5): batch 32: 119, 8: 148, 4: 290, 2: 219, 1: 194, identical outputs. Small batches keep
# the activations in cache, and they also cut the peak memory of a forward pass by about 8x.
MICRO_BATCH = 4


def thread_limit() -> int:
    """ONNX Runtime's threads: ``$OMP_NUM_THREADS`` where set (Ray sets it to a task's or an
    actor's CPUs, so that two actors on two cores do not run four threads), else 0 (ONNX
    Runtime's default: one per physical core)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 0


def session_options():
    """ONNX Runtime session options of every defectscope session (threads, no arena, quiet)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    # The arena keeps the largest batch's activations (hundreds of MB) for the process's
    # life; without it they are returned after every batch, at no measurable speed cost.
    options.enable_cpu_mem_arena = False
    # Spinning worker threads burn the cores that image decoding needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.intra_op_num_threads = thread_limit()
    return options


def run_micro_batches(session, images: np.ndarray) -> list[np.ndarray]:
    """Every output of ``session`` on ``images`` (its one input), fed :data:`MICRO_BATCH`
    images at a time, each output concatenated over the batch."""
    parts = [
        session.run(None, {"images": images[start : start + MICRO_BATCH]})
        for start in range(0, len(images), MICRO_BATCH)
    ]
    if len(parts) == 1:
        return parts[0]
    return [np.concatenate(outputs) for outputs in zip(*parts)]
