"""Mutations of model files and images for the fuzz tests (``tests/test_fuzz.py``) and the long
fuzz run (``tests/fuzz/run.py``). Every mutation is a function of the input bytes and a seeded
random generator, so a failing case is reproduced from its seed."""

from __future__ import annotations

import hashlib
import json
import math
import struct
import zlib
from collections.abc import Callable

import numpy as np

Mutation = Callable[[bytes, np.random.Generator], tuple[bytes, str]]


def flip_bits(data: bytes, rng: np.random.Generator, start: int = 0) -> tuple[bytes, str]:
    """1 to 8 random bits flipped at or after ``start``."""
    out = bytearray(data)
    n = int(rng.integers(1, 9))
    where = rng.integers(start, len(out), size=n)
    for i in where:
        out[int(i)] ^= 1 << int(rng.integers(0, 8))
    return bytes(out), f"flip {n} bits at {sorted(int(i) for i in where)[:4]}"


def truncate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    cut = int(rng.integers(0, len(data)))
    return data[:cut], f"truncate at {cut} of {len(data)}"


def append_junk(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    junk = rng.integers(0, 256, size=int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return data + junk, f"append {len(junk)} bytes"


# --- safetensors model files -------------------------------------------------------------------


def split_safetensors(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def join_safetensors(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


_ODD_VALUES = [
    float("nan"),
    float("inf"),
    -1.0,
    0,
    1e308,
    "abc",
    None,
    [],
    {},
    True,
    10**30,
    "../../etc/passwd",
]


def _edit_json_value(obj: dict, rng: np.random.Generator) -> str:
    """Change, delete or add one key somewhere in a nested dict."""
    path = []
    node = obj
    while isinstance(node, dict) and node:
        key = list(node)[int(rng.integers(0, len(node)))]
        if not isinstance(node[key], dict) or rng.random() < 0.3:
            break
        path.append(key)
        node = node[key]
    action = int(rng.integers(0, 3))
    if not isinstance(node, dict) or not node or action == 2:
        target = node if isinstance(node, dict) else obj
        target["extra_option"] = 1
        return f"add extra_option under {'/'.join(path) or 'top'}"
    if action == 0:
        del node[key]
        return f"delete {'/'.join([*path, key])}"
    value = _ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))]
    node[key] = value
    return f"set {'/'.join([*path, key])} = {value!r}"


def edit_model_header(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A plausible hand edit: a tensor's dtype/shape/offsets, or one config value; the header
    checksum is recomputed half of the time (as a deliberate edit or a newer version would)."""
    header, body = split_safetensors(data)
    meta = header.get("__metadata__", {})
    tensors = [k for k in header if k != "__metadata__"]
    choice = int(rng.integers(0, 5))
    if choice == 0 and tensors:
        name = tensors[int(rng.integers(0, len(tensors)))]
        dtype = ["F64", "F32", "F16", "I64", "I32", "U8", "BOOL", "BF16"][int(rng.integers(0, 8))]
        header[name]["dtype"] = dtype
        what = f"tensor {name} dtype -> {dtype}"
    elif choice == 1 and tensors:
        name = tensors[int(rng.integers(0, len(tensors)))]
        shape = header[name]["shape"]
        if shape:
            i = int(rng.integers(0, len(shape)))
            shape[i] = int(rng.choice([0, 1, shape[i] + 1, max(shape[i] - 1, 0), 2**31]))
        header[name]["shape"] = shape
        what = f"tensor {name} shape -> {shape}"
    elif choice == 2 and tensors:
        name = tensors[int(rng.integers(0, len(tensors)))]
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [begin, end + int(rng.integers(-16, 17))]
        what = f"tensor {name} offsets"
    elif choice == 3:
        key = ["format", "format_version", "tensors_sha256", "defectscope_version"][
            int(rng.integers(0, 4))
        ]
        meta[key] = str(_ODD_VALUES[int(rng.integers(0, len(_ODD_VALUES)))])
        what = f"metadata {key}"
    else:
        config = json.loads(meta.get("config", "{}"))
        what = "config: " + _edit_json_value(config, rng)
        meta["config"] = json.dumps(config)
        if rng.random() < 0.5 and "config_sha256" in meta:
            meta["config_sha256"] = hashlib.sha256(meta["config"].encode()).hexdigest()
            what += " (checksum recomputed)"
    header["__metadata__"] = meta
    return join_safetensors(header, body), what


def model_mutations(data: bytes) -> list[Mutation]:
    _, body = split_safetensors(data)
    body_start = len(data) - len(body)
    return [
        flip_bits,
        lambda d, r: flip_bits(d, r, start=body_start),
        truncate,
        append_junk,
        edit_model_header,
        edit_model_header,
    ]


# --- images ------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, i = [], 8
    while i + 8 <= len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind = data[i + 4 : i + 8]
        chunks.append((kind, data[i + 8 : i + 8 + length]))
        i += 12 + length
    return chunks


def _png_join(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = b"\x89PNG\r\n\x1a\n"
    for kind, payload in chunks:
        crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
        out += struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)
    return out


def edit_png_header(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """A consistent (CRC-correct) PNG whose IHDR claims another size, depth or colour type."""
    if not data.startswith(b"\x89PNG"):
        return flip_bits(data, rng)
    chunks = _png_chunks(data)
    for i, (kind, payload) in enumerate(chunks):
        if kind == b"IHDR" and len(payload) == 13:
            width, height, depth, colour = struct.unpack(">IIBB", payload[:10])
            field = int(rng.integers(0, 3))
            if field == 0:
                width, height = (int(rng.choice([0, 1, width * 2, 2**31 - 1])) for _ in range(2))
            elif field == 1:
                depth = int(rng.choice([1, 2, 4, 8, 16, 3, 255]))
            else:
                colour = int(rng.choice([0, 2, 3, 4, 6, 1, 7]))
            new = struct.pack(">IIBB", width, height, depth, colour) + payload[10:]
            chunks[i] = (kind, new)
            return _png_join(chunks), f"IHDR {width}x{height} depth {depth} colour {colour}"
    return flip_bits(data, rng)


def image_mutations() -> list[Mutation]:
    return [flip_bits, truncate, append_junk, edit_png_header]


def finite(values) -> bool:
    return all(math.isfinite(float(v)) for v in np.ravel(values))
