"""One read's time in all (OCR_URL_DEADLINE): its headers, body and redirects together.

Private to the one fetcher (tasks/lifecycle/fetcher.py) and its adapters
(_https_objects.py, _s3.py); runs where they run. OCR_URL_TIMEOUT bounds each wait of a
read only, and an origin that sends a byte every few seconds never trips it. A
`Deadline` bounds the whole read: each wait may take what is left at most, and a timer
cuts the read's connection when the time is up, which ends the wait the read is blocked
in. A read ended so is `url_timeout`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType

from tasks.errors import UrlTimeout


class Deadline:
    """A read's waits (`per_read` each) within `total` seconds from now (None: no total).

    Used as a context manager: its timer stops when the read is done.
    """

    def __init__(self, per_read: float, total: float | None) -> None:
        self.per_read = per_read
        self.total = total
        self._at = None if total is None else time.monotonic() + total
        self._lock = threading.Lock()
        self._cut: Callable[[], None] | None = None
        self._timer: threading.Timer | None = None
        self.expired = False  # the time is up: the timer cut the read's connection

    def __enter__(self) -> Deadline:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def wait(self) -> float:
        """The longest the next wait may take: OCR_URL_TIMEOUT, or what is left.

        UrlTimeout when nothing is left.
        """
        if self._at is None:
            return self.per_read
        left = self._at - time.monotonic()
        if left <= 0 or self.expired:
            raise self.error()
        return min(self.per_read, left)

    def check(self) -> None:
        """UrlTimeout when the time is up."""
        self.wait()

    def watch(self, cut: Callable[[], None]) -> None:
        """Call `cut` when the time is up: it ends the read's connection (the latest one).

        `cut` runs in the timer's thread while the read may be ending by itself: it
        must do nothing to a connection already closed.
        """
        if self._at is None:
            return
        with self._lock:
            self._cut = cut
            if self._timer is None:
                self._timer = threading.Timer(max(0.0, self._at - time.monotonic()),
                                              self._up)
                self._timer.daemon = True
                self._timer.start()

    def _up(self) -> None:
        with self._lock:
            self.expired = True
            cut, self._cut = self._cut, None
        if cut is not None:
            cut()

    def close(self) -> None:
        """Stop the timer: the read is done."""
        with self._lock:
            self._cut = None
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()

    def error(self) -> UrlTimeout:
        return UrlTimeout(f"the read took longer than {self.total:g} s in all (its "
                          "headers, body and redirects; OCR_URL_DEADLINE)")


def shut(sock: socket.socket | None) -> None:
    """End every wait on `sock` (a `Deadline`'s cut); nothing when it is already closed.

    The socket's own shutdown, also for a TLS socket: its reader then sees the end of
    the stream. The reader closes the socket itself.
    """
    if sock is None:
        return
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:  # closed (or never connected) by the reader first: nothing to end
        return
