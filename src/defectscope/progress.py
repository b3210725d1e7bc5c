"""Progress bars with throughput and ETA, silent in quiet mode."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm


@contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool, unit: str = "img") -> Iterator[tqdm]:
    """A tqdm bar on stderr showing ``img/s`` and the ETA; a no-op bar when not ``enabled``."""
    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()
