"""Numbered run folders: ``runs/padim/bottle``, ``runs/padim/bottle2``, ..."""

from __future__ import annotations

from pathlib import Path


def next_run_dir(project: str | Path, name: str, *, exist_ok: bool = False) -> Path:
    """Create and return ``project/name``, or ``name2``, ``name3``... if it is taken."""
    project = Path(project)
    candidate = project / name
    if not exist_ok:
        n = 2
        while candidate.exists():
            candidate = project / f"{name}{n}"
            n += 1
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate
