"""The API's heavy work: what grows with a stored object, a few requests at a time.

Runs in the `api` process. Some answers cost in proportion to a stored object: the
console's compare of two readings (tasks/console/_compare.py), a corrected hOCR, ALTO
or PDF made again from the stored one (tasks/api/_results.py). Each such request takes
one of the process's turns (OCR_API_HEAVY_CONCURRENCY) and works in a worker thread,
off the event loop. A request that finds every turn taken waits for one on the event
loop, holding no thread, for at most OCR_API_HEAVY_WAIT seconds, then is answered 503
`busy`: however many such requests come, the API's other routes keep the thread pool.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from tasks.api._errors import Busy
from tasks.settings import Settings

T = TypeVar("T")


class HeavyWork:
    """The process's turns for heavy work (anyio's CapacityLimiter: first come, first served)."""

    def __init__(self, concurrency: int, wait: float) -> None:
        self._turns = anyio.CapacityLimiter(concurrency)
        self._wait = wait

    @classmethod
    def of(cls, settings: Settings) -> HeavyWork:
        return cls(settings.api_heavy_concurrency, settings.api_heavy_wait)

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` in a worker thread once a turn is free; Busy when none comes."""
        turn = False
        with anyio.move_on_after(self._wait):
            await self._turns.acquire()
            turn = True
        if not turn:
            raise Busy(f"no turn for this request came within {self._wait:g} s "
                       "(OCR_API_HEAVY_WAIT); try again shortly")
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self._turns.release()


def heavy_of(request: Request) -> HeavyWork:
    heavy: HeavyWork = request.app.state.heavy
    return heavy
