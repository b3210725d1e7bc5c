"""Numbered run folders: ``runs/padim/bottle``, ``runs/padim/bottle2``, ...

A run folder is created and checked writable before any work starts, so that an hour of fitting
never ends in a ``PermissionError``; a run that fails before writing anything leaves no empty
folder behind (:func:`run_folder`).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from defectscope.errors import OutputError


def _create(path: Path) -> None:
    """``mkdir -p path``, with one clear error for every way it can fail."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise OutputError(
            f"cannot create the run folder {path}: {exc.filename or path} exists and is not a "
            "folder; pass --project a folder you can write to"
        ) from exc
    except PermissionError as exc:
        raise OutputError(
            f"cannot create the run folder {path}: permission denied on {exc.filename or path}; "
            "pass --project a folder you can write to"
        ) from exc
    except OSError as exc:
        raise OutputError(
            f"cannot create the run folder {path}: {exc.strerror or exc}; "
            "pass --project a folder you can write to"
        ) from exc


def check_writable(folder: Path) -> None:
    """Write and delete a probe file in ``folder``; :class:`OutputError` if that fails."""
    probe = folder / f".defectscope-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as handle:
            handle.write(b"ok")
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise OutputError(
            f"cannot write to the run folder {folder}: {exc.strerror or exc}; "
            "pass --project a folder you can write to"
        ) from exc


def check_output_file(path: Path) -> None:
    """Before minutes of work: the folder of output file ``path`` exists and is writable."""
    if not path.parent.is_dir():
        raise OutputError(f"cannot write {path}: the folder {path.parent} does not exist")
    check_writable(path.parent)


def next_run_dir(project: str | Path, name: str, *, exist_ok: bool = False) -> Path:
    """Create and return ``project/name``, or ``name2``, ``name3``... if it is taken; checked
    writable."""
    project = Path(project)
    candidate = project / name
    if exist_ok:
        _create(candidate)
    else:
        _create(project)
        n = 2
        while True:
            try:
                candidate.mkdir()  # atomic: of two processes naming one folder, one gets it
                break
            except FileExistsError:
                candidate = project / f"{name}{n}"
                n += 1
            except OSError:
                _create(candidate)  # says what is wrong in one line
                raise
    check_writable(candidate)
    return candidate


def remove_if_empty(folder: Path, *, up_to: Path | None = None) -> None:
    """Remove ``folder`` and then its parents while they are empty, stopping at ``up_to``."""
    current = folder
    while current != up_to and current != current.parent:
        try:
            if any(current.iterdir()):
                return
            os.rmdir(current)
        except OSError:
            return
        current = current.parent


@contextlib.contextmanager
def run_folder(project: str | Path, name: str) -> Iterator[Path]:
    """A new numbered run folder, checked writable; removed again (with the parents it needed)
    when the block fails before anything was written into it."""
    project = Path(project)
    existed = [p for p in (project, *project.parents) if p.exists()]
    run = next_run_dir(project, name)
    try:
        yield run
    except BaseException:
        remove_if_empty(run, up_to=existed[0] if existed else None)
        raise
