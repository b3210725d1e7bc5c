"""Single-field edits of a model file's header and of an exported file's metadata, with every
checksum recomputed, as a deliberate hand edit (or a tool that rewrites the file) would leave
them; and the check that runs each edited file through the CLI's ``predict`` with overlays.

The claim under test (issue 24): whatever one field is changed to, ``predict`` either refuses
the file with one line (exit code 2) or scores the parts, and a clearly defective part is never
passed. No traceback, ever.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .mutate import join_safetensors, split_safetensors

#: values a field is set to: wrong types, non-finite and extreme numbers, empty containers
ODD_VALUES: list[Any] = [
    float("nan"),
    float("inf"),
    float("-inf"),
    -1,
    0,
    -0.0,
    0.5,
    1e-300,
    1e30,
    -1e30,
    10**30,
    2**63,
    True,
    False,
    None,
    "",
    "abc",
    "1e30",
    "../../etc/passwd",
    [],
    [1, 2, 3],
    [float("nan"), 1],
    {},
    {"a": 1},
]

Path_ = tuple[Any, ...]


def _nodes(obj: Any, prefix: Path_ = ()) -> Iterator[Path_]:
    """Every key path below ``obj`` (containers and leaves alike)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _nodes(value, (*prefix, key))
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield (*prefix, i)
            yield from _nodes(value, (*prefix, i))


def edit_one_field(obj: Any, rng: np.random.Generator) -> tuple[Any, str]:
    """A copy of ``obj`` with one field deleted, replaced by an odd value, scaled or turned
    into its string; or one unknown key added."""
    out = copy.deepcopy(obj)
    paths = list(_nodes(out))
    path = paths[int(rng.integers(0, len(paths)))]
    *parents, last = path
    node = out
    for key in parents:
        node = node[key]
    old = node[last]
    action = int(rng.integers(0, 10))
    name = "/".join(map(str, path))
    if action == 0 and isinstance(node, dict):
        del node[last]
        return out, f"delete {name}"
    if action == 1 and isinstance(node, dict):
        node["extra_field"] = 1
        return out, f"add extra_field beside {name}"
    if action in (2, 3) and isinstance(old, (int, float)) and not isinstance(old, bool):
        factor = float(rng.choice([-1.0, 0.0, 0.5, 2.0, 1e6, 1e-6]))
        node[last] = type(old)(old * factor) if isinstance(old, float) else int(old * factor)
        return out, f"{name} = {old!r} x {factor:g}"
    if action == 4 and not isinstance(old, (dict, list)):
        node[last] = str(old)
        return out, f"{name} = str({old!r})"
    value = ODD_VALUES[int(rng.integers(0, len(ODD_VALUES)))]
    node[last] = value
    return out, f"{name} = {value!r}"


def edit_model_field(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One field of a ``.safetensors`` model's header edited; ``config_sha256`` recomputed."""
    header, body = split_safetensors(data)
    meta = dict(header["__metadata__"])
    record = json.loads(meta["config"])
    if rng.random() < 0.15:  # a field of the format record itself
        edited, what = edit_one_field({k: v for k, v in meta.items() if k != "config"}, rng)
        edited = {k: v if isinstance(v, str) else json.dumps(v) for k, v in edited.items()}
        meta = {"config": meta["config"], **edited}
    else:
        edited, what = edit_one_field(record, rng)
        text = json.dumps(edited)
        meta["config"] = text
        meta["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    header["__metadata__"] = meta
    return join_safetensors(header, body), what


def edit_export_field(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One field of an exported ``.onnx`` file's metadata edited; its SHA-256 recomputed."""
    import onnx

    from defectscope.engine.runtimes.exported import DIGEST_KEY, METADATA_KEY, export_digest

    model = onnx.load_from_string(data)
    props = {p.key: p for p in model.metadata_props}
    edited, what = edit_one_field(json.loads(props[METADATA_KEY].value), rng)
    text = json.dumps(edited)
    props[METADATA_KEY].value = text
    props[DIGEST_KEY].value = export_digest(model.graph.SerializeToString(), text)
    return model.SerializeToString(), what


def predict_outcome(data: bytes, suffix: str, images: dict[str, Path]) -> str:
    """Run ``defectscope predict`` (overlays on) on an edited model file and the named images.

    Returns ``refused`` (exit code 2 with one line) or ``scored``; raises AssertionError when a
    part named ``defective...`` passes, when the verdict rows are incomplete, or when anything
    other than one line comes out of a refusal. Any exception escaping the CLI propagates."""
    from defectscope.cli import main

    with tempfile.TemporaryDirectory() as folder:
        model = Path(folder) / f"model{suffix}"
        model.write_bytes(data)
        project = Path(folder) / "runs"
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = main(
                ["predict", "--model", str(model), *map(str, images.values()),
                 "--project", str(project), "-q"]
            )  # fmt: skip
        message = err.getvalue().strip()
        if code == 2:
            assert message.count("\n") == 0 and message, f"a refusal is one line: {message!r}"
            return "refused"
        assert code == 0, f"exit code {code}: {message}"
        rows = list(csv.DictReader(open(project / "predict" / "predict" / "predictions.csv")))
        assert len(rows) == len(images) and not any(r["error"] for r in rows), rows
        for name, row in zip(images, rows):
            if name.startswith("defective"):
                assert row["is_anomalous"] == "True", f"a defective part passed: {row}"
            assert (project / "predict" / "predict" / row["overlay"]).is_file()
        return "scored"
