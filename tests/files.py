"""Model files edited by someone who knows the format: every checksum recomputed, so that only
the loader's own checks can refuse the edit."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path


def resave(
    path: Path,
    out: Path,
    *,
    drop=(),
    fitted_changes: dict | None = None,
    edit: Callable[[dict], None] | None = None,
    add: dict | None = None,
) -> Path:
    """``path`` written again to ``out`` without the tensors ``drop``, with the tensors ``add``,
    ``fitted_changes`` applied to the header's ``fitted`` record and ``edit(header)`` to the
    whole header."""
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file

    from defectscope.engine.persistence.files import tensors_digest

    with safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata())
    tensors = {k: v for k, v in load_file(str(path)).items() if k not in drop}
    tensors.update(add or {})
    header = json.loads(metadata["config"])
    header["fitted"].update(fitted_changes or {})
    if edit is not None:
        edit(header)
    text = json.dumps(header)
    metadata.update(
        config=text,
        config_sha256=hashlib.sha256(text.encode()).hexdigest(),
        tensors_sha256=tensors_digest(tensors),
    )
    save_file(tensors, str(out), metadata=metadata)
    return out
