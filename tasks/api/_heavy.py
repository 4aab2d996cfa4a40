"""The API's heavy work: what grows with a stored object, a few requests at a time.

Runs in the `api` process. Some answers cost in proportion to a stored object: the
console's compare of two readings (tasks/console/_compare.py), a corrected hOCR, ALTO
or PDF made again from the stored one (tasks/api/_results.py), and any decode of a
stored result past 1 MB (`read_stored`): a result's format, a page view. Each such request takes
one of the process's turns (OCR_API_HEAVY_CONCURRENCY) and works in a worker thread,
off the event loop. A request that finds no turn waits for one on the event loop,
holding no thread, for at most OCR_API_HEAVY_WAIT seconds, then is answered 503
`busy`: however many such requests come, the API's other routes keep the thread pool.

The turns are shared per client. A client holds at most its share of them, half
(rounded up), so another client finds a turn free or the next one freed. A freed
turn goes to the waiting client served least lately, its oldest request first. A
request holds its client's turn until it ends, a compare refused past its time
(`compare_too_large`) included: a client's slow requests wait for its own turns.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from tasks.api._errors import Busy
from tasks.settings import Settings

T = TypeVar("T")
HEAVY_RESULT_BYTES = 1_000_000  # a stored result past this is decoded as heavy work


def stored_result_bytes(summary: dict[str, Any]) -> int:
    """The bytes of a job's stored result, as its summary counts them."""
    return int((summary.get("bytes") or {}).get("result") or 0)


class _Waiter:
    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class HeavyWork:
    """The process's turns for heavy work, at most `share` of them held by one client.

    Its state is touched by the event loop alone (no lock).
    """

    def __init__(self, concurrency: int, wait: float) -> None:
        self._free = concurrency
        self._share = max(1, -(-concurrency // 2))
        self._wait = wait
        self._held: dict[str, int] = {}
        self._waiting: dict[str, deque[_Waiter]] = {}
        self._served: dict[str, int] = {}  # when each client last got a turn (a count)
        self._turns_given = 0

    @classmethod
    def of(cls, settings: Settings) -> HeavyWork:
        return cls(settings.api_heavy_concurrency, settings.api_heavy_wait)

    async def run(self, client: str, func: Callable[..., T], *args: Any) -> T:
        """`func(*args)` in a worker thread in one of `client`'s turns; Busy when none comes."""
        if not self._waiting.get(client) and self._may_take(client):
            self._take(client)
        else:
            await self._wait_turn(client)
        try:
            return await anyio.to_thread.run_sync(func, *args)
        finally:
            self._release(client)

    async def _wait_turn(self, client: str) -> None:
        waiter = _Waiter()
        self._waiting.setdefault(client, deque()).append(waiter)
        try:
            with anyio.move_on_after(self._wait):
                await waiter.event.wait()
        except BaseException:  # cancelled (the caller went away): its turn, if given, back
            self._leave(client, waiter)
            raise
        if not waiter.granted:
            self._leave(client, waiter)
            raise Busy(f"no turn for this request came within {self._wait:g} s "
                       "(OCR_API_HEAVY_WAIT); try again shortly")

    def _may_take(self, client: str) -> bool:
        return self._free > 0 and self._held.get(client, 0) < self._share

    def _take(self, client: str) -> None:
        self._turns_given += 1
        self._served[client] = self._turns_given
        self._free -= 1
        self._held[client] = self._held.get(client, 0) + 1

    def _release(self, client: str) -> None:
        self._free += 1
        self._held[client] -= 1
        if not self._held[client]:
            del self._held[client]
            if client not in self._waiting:
                self._served.pop(client, None)
        self._grant()

    def _leave(self, client: str, waiter: _Waiter) -> None:
        """A waiter gone: out of its queue, and its turn back if one was given."""
        if waiter.granted:
            self._release(client)
            return
        queue = self._waiting.get(client)
        if queue is not None and waiter in queue:
            queue.remove(waiter)
            if not queue:
                del self._waiting[client]

    def _grant(self) -> None:
        """Free turns to the waiting clients in turn, each within its share."""
        while True:
            ready = [c for c in self._waiting if self._may_take(c)]
            if not ready:
                return
            client = min(ready, key=lambda c: self._served.get(c, -1))  # least lately
            queue = self._waiting[client]
            waiter = queue.popleft()
            if not queue:
                del self._waiting[client]
            self._take(client)
            waiter.granted = True
            waiter.event.set()


async def read_stored(heavy: HeavyWork, client: str, summary: dict[str, Any],
                      read: Callable[..., T], *args: Any) -> T:
    """`read(*args)`, which decodes a job's stored result: heavy work past 1 MB stored.

    Else in a worker thread, as any blocking read.
    """
    if stored_result_bytes(summary) > HEAVY_RESULT_BYTES:
        return await heavy.run(client, read, *args)
    return await anyio.to_thread.run_sync(read, *args)


def heavy_of(request: Request) -> HeavyWork:
    heavy: HeavyWork = request.app.state.heavy
    return heavy
