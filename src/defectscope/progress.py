"""Progress bars with throughput and ETA, silent in quiet mode."""

from __future__ import annotations

import sys
import threading
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


class Stages:
    """One live line per long step that has no count (building a backbone, exporting a graph,
    selecting a coreset): its name and the seconds it has been running, refreshed twice a
    second, replaced by the next step or closed by :meth:`finish`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, text: str) -> None:
        self.finish()
        if not self.enabled:
            return
        self._bar = tqdm(
            total=None,
            desc=text,
            bar_format="{desc}: {elapsed}",
            file=sys.stderr,
            dynamic_ncols=True,
            leave=False,
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, args=(self._bar, self._stop))
        self._thread.daemon = True
        self._thread.start()

    @staticmethod
    def _tick(bar: tqdm, stop: threading.Event) -> None:
        while not stop.wait(0.5):
            bar.refresh()

    def finish(self) -> None:
        if self._bar is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.close()
        self._bar, self._thread = None, None
