"""Slow clients: a connection that sends its request line and headers too slowly is closed.

uvicorn's keep-alive timeout runs only after a response, so a client that opens connections and
trickles header bytes ("slowloris") would hold them for ever; ``limit_concurrency`` caps how
many it can hold, and this protocol closes each one ``header_timeout`` seconds after it opened
(or after its previous response) unless a whole request head has arrived. The body has its own
deadline in the app (``Limits.upload_timeout``).
"""

from __future__ import annotations

import asyncio
from typing import Any


def guarded_h11(header_timeout: float) -> type:
    """uvicorn's h11 protocol with a deadline for each request head."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head_timer: asyncio.TimerHandle | None = None
            self._arm()

        def _arm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            self._head_timer = self.loop.call_later(header_timeout, self._head_overdue)

        def _head_overdue(self) -> None:
            # waiting for a request head (none yet, or the last one answered): too slow
            if self.cycle is None or self.cycle.response_complete:
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Any) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
            super().connection_lost(exc)

    return GuardedH11
