"""Files appear whole or not at all: written to a temporary file beside the target, then
renamed (torch-free, used by every writer of models and exports)."""

from __future__ import annotations

import os
from pathlib import Path


def publish(tmp: str | Path, path: Path) -> None:
    """Give a finished temporary file the usual file mode and rename it to ``path`` (atomic).

    ``mkstemp`` creates 0600; model and exported files are read by services and colleagues, so
    they get what the umask gives any new file (0644 under the usual 022).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
