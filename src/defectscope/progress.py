"""Progress bars with throughput and ETA, silent in quiet mode."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class _Silent:
    """What a disabled bar is: calls do nothing (and tqdm, 40 ms to import, stays unloaded)."""

    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, *args: Any, **kwargs: Any) -> None: ...

    def close(self) -> None: ...


@contextmanager
def progress_bar(total: int, desc: str, *, enabled: bool, unit: str = "img") -> Iterator[Any]:
    """A tqdm bar on stderr showing ``img/s`` and the ETA; a no-op bar when not ``enabled``."""
    if not enabled:
        yield _Silent()
        return
    from tqdm import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        unit=unit,
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
        self._bar: Any = None
        self._step = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, text: str) -> None:
        """Show ``text`` as the current step. ``"<step>: <count>"`` with the step already shown
        updates its count on the same line (the seconds keep running)."""
        step = text.split(": ", 1)[0]
        if self._bar is not None and step == self._step:
            self._bar.set_description_str(text, refresh=False)
            return
        self.finish()
        self._step = step
        if not self.enabled:
            return
        from tqdm import tqdm

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
    def _tick(bar: Any, stop: threading.Event) -> None:
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
