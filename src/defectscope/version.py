"""The installed distribution's version, read once (pyproject.toml is its one home)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("defectscope")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"
