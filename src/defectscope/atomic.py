"""Files appear whole or not at all: written to a temporary file beside the target, then
renamed (torch-free; every file defectscope writes goes through here)."""

from __future__ import annotations

import contextlib
import csv
import glob
import io
import os
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file the usual file mode and rename it to ``path`` (atomic).

    ``mkstemp`` creates 0600; model and exported files are read by services and colleagues, so
    they get what the umask gives any new file (0644 under the usual 022).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def temporary(path: str | Path) -> str:
    """A new empty temporary file beside ``path`` for its next version, named
    ``.<name>.<pid>.<random>.tmp``; first removes such files left by processes that no longer
    run (a ``kill -9`` or a power cut mid-write), never those of a live writer."""
    path = Path(path)
    remove_orphans(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(fd)
    return tmp


def remove_orphans(path: Path) -> list[Path]:
    """Delete the temporary files of ``path`` whose writing process is gone; returns them."""
    removed = []
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        # names without a PID were written by earlier releases: orphans once a day old
        orphan = not _running(int(pid)) if pid.isdigit() else _older_than(stale, 86_400)
        if orphan:
            with contextlib.suppress(OSError):
                stale.unlink()
                removed.append(stale)
    return removed


def _older_than(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime > seconds
    except OSError:
        return False


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid we can ask about: keep its file
    return True


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[str]:
    """A temporary file beside ``path`` to write the new version into; published as ``path``
    (:func:`publish`) when the block ends normally. On any failure (a full disk, an interrupt)
    the temporary file is removed and a previous ``path`` is left as it was: never a
    half-written file, never a stray temp file."""
    path = Path(path)
    tmp = temporary(path)
    try:
        yield tmp
        publish(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            if os.path.exists(tmp):
                os.unlink(tmp)


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all (:func:`replacing`)."""
    path = Path(path)
    with replacing(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
    return path


def write_text(path: Path, text: str) -> Path:
    """:func:`write_bytes` of UTF-8 text."""
    return write_bytes(path, text.encode("utf-8"))


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    """:func:`write_text` of a CSV table (``rows`` as sequences in ``header``'s order)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return write_text(path, buffer.getvalue())
