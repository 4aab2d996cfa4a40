"""The API process's one watch over job endings: every waiting request shares it.

Runs in the `api` process: one thread blocks in one XREAD over the ending notices
(tasks/state/job_notices.py) of every job some request waits for (`GET
/v1/jobs/{id}?wait=`, the events stream), and wakes each waiter when its job's notice
appears. Requests wait on the event loop, holding no thread; the thread sleeps while
no request waits. Redis unreachable: the thread tries again a second later, and a
waiter's own time limit still ends its wait (it then reads the status as usual).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import redis

from tasks.state.job_notices import EndingWatch

log = logging.getLogger(__name__)
# Seconds one XREAD blocks: a job a new request waits for joins the read after this.
BLOCK_SECONDS = 1.0


class EndingWatcher:
    """Wakes the requests that wait for jobs' endings (one thread, one read at a time)."""

    def __init__(self, client: redis.Redis) -> None:
        self._watch = EndingWatch(client)
        self._waiters: dict[str, list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self._lock = threading.Lock()
        self._someone = threading.Event()  # set while a request waits
        self._thread: threading.Thread | None = None
        self._stopped = False

    async def wait(self, job_id: str, timeout: float) -> bool:
        """Wait up to `timeout` s for `job_id`'s ending notice; whether it came."""
        if timeout <= 0:
            return False
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        entry = (loop, event)
        with self._lock:
            self._waiters.setdefault(job_id, []).append(entry)
            self._someone.set()
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="ocr-endings",
                                                daemon=True)
                self._thread.start()
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._lock:
                waiting = self._waiters.get(job_id, [])
                if entry in waiting:
                    waiting.remove(entry)
                if not waiting:
                    self._waiters.pop(job_id, None)
                if not self._waiters:
                    self._someone.clear()

    def stop(self) -> None:
        self._stopped = True
        self._someone.set()

    def _run(self) -> None:
        while not self._stopped:
            if not self._someone.wait(timeout=60):
                continue
            with self._lock:
                ids = list(self._waiters)
            if not ids:
                continue
            try:
                ended = self._watch.ended(ids, block=BLOCK_SECONDS)
            except redis.RedisError as exc:
                log.warning("job endings not read: %s", type(exc).__name__)
                time.sleep(1.0)
                continue
            with self._lock:
                woken = [entry for job_id in ended for entry in self._waiters.pop(job_id, [])]
                if not self._waiters:
                    self._someone.clear()
            for loop, event in woken:
                loop.call_soon_threadsafe(event.set)
