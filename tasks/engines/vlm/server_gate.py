"""The vlm-api engine's view of its inference server: up, or down and being watched.

Runs in a vlm-api worker (the threads of its pool). A GPU server takes minutes to load
a model, and restarts; pages sent meanwhile must neither fail, nor burn their retries,
nor go to the fallback. So a page whose request finds the server unreachable (refused,
connect timeout, 502-504) marks it down and waits here; while it is down no page is
sent, the pool's threads stay busy waiting, and the worker takes no new pages. One
waiting thread at a time looks at the server (`probe`: its /v1/models or /health) every
OCR_VLM_API_PROBE_SECONDS; when it answers, every page goes on, with a log line and the
outage counted (`ocr_vlm_server_outages_total`, `ocr_vlm_server_wait_seconds_total`).

Pure: no HTTP library here (the engine gives `probe`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ServerWaitOver(Exception):
    """The page's own time ran out while the server was down (the caller says why)."""


class ServerGate:
    """Whether the inference server answers; waits while it does not."""

    def __init__(self, probe: Callable[[], bool], interval: float, where: str) -> None:
        self._probe = probe
        self._interval = interval
        self._where = where
        self._cond = threading.Condition()
        self._up = True
        self._probing = False
        self._down_since = 0.0
        self.outages = 0
        self.down_seconds = 0.0

    @property
    def up(self) -> bool:
        return self._up

    def mark_down(self, reason: str) -> None:
        """A request found the server unreachable: hold every page until it answers."""
        with self._cond:
            if not self._up:
                return
            self._up = False
            self._down_since = time.monotonic()
        log.warning("vlm-api: the inference server at %s is down or loading (%s); pages "
                    "wait until it answers", self._where, reason)

    def wait_up(self, until: float | None) -> None:
        """Return once the server is up; `ServerWaitOver` at `until` (monotonic)."""
        with self._cond:
            while not self._up:
                now = time.monotonic()
                if until is not None and now >= until:
                    raise ServerWaitOver()
                if self._probing:
                    self._cond.wait(self._pause(now, until))
                    continue
                self._probing = True
                self._cond.release()
                try:
                    answered = self._probe()
                finally:
                    self._cond.acquire()
                    self._probing = False
                if answered:
                    self._reopen()
                else:
                    self._cond.wait(self._pause(time.monotonic(), until))

    def _pause(self, now: float, until: float | None) -> float:
        return max(0.0, min(self._interval, until - now)) if until is not None \
            else self._interval

    def _reopen(self) -> None:
        """(Holding the lock.) The server answered: every waiting page goes on."""
        waited = time.monotonic() - self._down_since
        self._up = True
        self.outages += 1
        self.down_seconds += waited
        self._cond.notify_all()
        log.warning("vlm-api: the inference server at %s answers again after %.0f s; "
                    "pages go on", self._where, waited)
