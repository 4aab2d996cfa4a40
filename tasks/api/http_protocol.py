"""The API's HTTP/1.1 protocol: uvicorn's h11 one, with a bound on reading a request's head.

Runs in the `api` process (scripts/run_api.py serves the app with it). uvicorn bounds
the idle time between two requests of a connection (`timeout_keep_alive`) but not the
time a request's line and headers take to arrive: a client that sends them a byte at a
time would hold its connection for as long as it likes. Here a timer starts whenever
the connection waits for a request's head (it opened, or the previous answer ended),
stops once the whole head is in, and closes the connection if it fires first
(OCR_API_HEADER_TIMEOUT). A body's time is OCR_API_BODY_TIMEOUT's, in the app.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


class HeadTimedProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request head is late (`head_timeout`)."""

    head_timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch_head()

    def handle_events(self) -> None:
        super().handle_events()
        self._watch_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def _watch_head(self) -> None:
        """Time the head while the connection waits for one; stop once it is in."""
        waiting = self.conn.their_state is h11.IDLE and not self.transport.is_closing()
        if not waiting:
            self._stop_head_timer()
        elif self._head_timer is None:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def head_timed(seconds: float) -> type[HeadTimedProtocol]:
    """The protocol class for uvicorn's `http`, its head bound `seconds`."""
    return type("HeadTimedProtocol", (HeadTimedProtocol,), {"head_timeout": seconds})
