"""The worker's prefork pool, with the memory recycle limit measured as growth.

Celery's `worker_max_memory_per_child` is checked by billiard in each pool child after
every task, against the child's whole resident memory. A child that holds a 4 GB model
would then be recycled after every task. This pool subclass adds, in each child, the
child's RSS once `worker_process_init` (which loads the engine) has run to that limit:
the child is recycled when it has *grown* by more than OCR_MAX_MEMORY_PER_CHILD_MB.
Its task limit is OCR_MAX_TASKS_PER_CHILD less up to a fifth, drawn at its start, so
that children started together do not all recycle at once.

Selected by `worker_pool` in `celery_config()` (tasks/queue/celery_config.py).
`ThreadTaskPool` is a vlm-api worker's (its pages wait on an inference server).
`GrowthWorker.on_loop_start` runs in each pool child, after billiard's `after_fork` ran
the initializer and before the child's work loop reads `maxtasks` and
`max_memory_per_child`.

A recycled child's replacement starts as it exits, also where Celery misses the exit
(its sentinel closed before the child could be reaped: the pool looks again every
`REAP_EVERY` s), and within `MAINTAIN_EVERY` s in any case.

`warm_before_fork` runs in the worker parent as its pool starts (`TaskPool.on_start`),
before the pool forks its children: what each child
would otherwise load afresh at its start is loaded once there and inherited, so that a
recycled child's replacement reads its first page as fast as its last. A retiring
child exits within milliseconds of its last task (`quick_exit_poll`).

A job written to a child as the broker connection closes is kept (`flush`): its
result acknowledges its message.

The pool also keeps a child's result that the worker parent was reading when its broker
connection was lost (`ResumingResultHandler`): Celery's event loop drops every reader
at the loss, the half-read result's among them, and a fresh read of that pipe would
start inside the message.
"""

from __future__ import annotations

import gc
import logging
import random
import sys
from collections.abc import Generator
from inspect import GEN_SUSPENDED, getgeneratorstate
from typing import Any

from billiard import pool as billiard_pool
from billiard.compat import mem_rss
from celery.concurrency import asynpool, prefork, thread
from PIL import Image

log = logging.getLogger(__name__)


# The C declaration billiard's `set_pdeathsig` parses with cffi in each pool child
# where cffi is importable (cryptography requires it): parsed once in the parent, the
# children inherit cffi's parser and pycparser's tables instead of building them.
PDEATHSIG_DECLARATION = "int prctl (int __option, ...);"


def warm_before_fork() -> None:
    """Load once, in the worker parent before its pool forks, what each child would.

    - Pillow's format plugins: a child's first WebP preview (tasks/pipeline/previews.py)
      makes Pillow import all of them (`Image.init()`), about 40 modules;
    - cffi's C parser (pycparser), which billiard builds in each child to set its
      parent-death signal: tens of ms of a child's start, at every recycle.

    Then freezes the parent's objects out of its garbage collector (`gc.freeze`, as
    Python's docs advise before forking): Celery collects garbage before each fork,
    which over the parent's whole heap (every module the service imports) took
    ~150 ms a replacement child, and the children's own collections no longer touch,
    and so copy, the pages they share with the parent.
    """
    Image.init()
    cffi = sys.modules.get("cffi")  # billiard imports it where it is installed
    if cffi is not None:
        cffi.FFI().cdef(PDEATHSIG_DECLARATION)
    gc.freeze()


# How often a retiring child looks whether the worker parent has read its last result
# before it exits (billiard waits so, or the parent could count the child's last job as
# lost with it). billiard looks every 0.1 s, up to 300 times; the parent reads a result
# within milliseconds, so each recycle left its slot idle for ~0.1 s after the child's
# last task. Every EXIT_POLL s instead, with billiard's patience (30 s) kept.
EXIT_POLL = 0.005
EXIT_PATIENCE = 30.0


def quick_exit_poll() -> None:
    """Set billiard's look for a retiring child's last result read to every EXIT_POLL s.

    Runs in the worker parent before its pool forks (the children inherit it). Sets
    billiard.pool's two module constants its `Worker` reads as a child retires.
    """
    billiard_pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL = EXIT_POLL
    billiard_pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT = round(EXIT_PATIENCE / EXIT_POLL)


# A child's task limit is OCR_MAX_TASKS_PER_CHILD less up to this share of it, drawn
# at its start: children that started together take tasks in turn and would otherwise
# all recycle at once, the worker reading nothing while every engine loads again.
TASKS_STAGGER = 0.2


def staggered(max_tasks: int, draw: float) -> int:
    """`max_tasks` less up to TASKS_STAGGER of it, by `draw` in [0, 1); at least 1."""
    return max(1, max_tasks - int(max_tasks * TASKS_STAGGER * draw))


class GrowthWorker(asynpool.Worker):
    """A pool child whose memory limit counts from its RSS after the engine loaded.

    Its task limit is staggered (`staggered`), so that the pool's children recycle
    one at a time.
    """

    def on_loop_start(self, pid: int) -> None:
        max_tasks: int = getattr(self, "maxtasks", None) or 0
        if max_tasks > 0:
            self.maxtasks = staggered(max_tasks, random.random())
            log.info("pool child %d: recycles after %d tasks", pid, self.maxtasks)
        limit: int = getattr(self, "max_memory_per_child", None) or 0
        if limit > 0:
            baseline = mem_rss()
            if baseline > 0:
                self.max_memory_per_child = limit + baseline
                log.info("pool child %d: memory baseline %d MB; recycled above %d MB",
                         pid, baseline // 1024, (limit + baseline) // 1024)
        super().on_loop_start(pid)


class ResumingResultHandler(asynpool.ResultHandler):
    """Reads the children's results; one read half-way when the loop resets goes on.

    On a lost broker connection Celery's event loop resets its hub (every reader
    dropped) and registers the pool again: a result message of a child read in part
    (a task that ended just then) would be read afresh from inside its body. That
    child then never reports a result: the parent counts it busy with that task, gives
    it no more work until the task's time limit kills it, and then fails reading its
    pipe ("Unrecoverable error": the worker parent exits). Each pipe's reading is
    kept here and resumed where it stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.reading: dict[int, Generator[None, None, None]] = {}
        super().__init__(*args, **kwargs)

    def _recv_message(self, add_reader: Any, fd: int, callback: Any,
                      *args: Any, **kwargs: Any) -> Generator[None, None, None]:
        message: Generator[None, None, None] = super()._recv_message(
            add_reader, fd, callback, *args, **kwargs)
        self.reading[fd] = message
        return message

    def resume_reads(self, hub: Any) -> None:
        """Put each result read in part back on `hub`, in place of a fresh read."""
        for fd, message in list(self.reading.items()):
            del self.reading[fd]
            if getgeneratorstate(message) == GEN_SUSPENDED and fd in self.fileno_to_outq:
                log.info("pool child pipe %d: a result read in part when the event loop "
                         "was reset is read on", fd)
                hub.add_reader(fd, message)


# Seconds between the pool's own checks for exited children (Celery's: 5). A recycled
# child's exit is seen at once through its process sentinel, unless the sentinel closes
# before the kernel lets the child be reaped (Celery's handler looks once, then leaves
# the child to this check): the pool then looks for that child's exit again every
# REAP_EVERY s, up to REAP_LOOKS times (a loaded machine may take some milliseconds to
# finish an exit), and this check is the last resort. Each look is one `waitpid`.
MAINTAIN_EVERY = 0.25
REAP_EVERY = 0.002
REAP_LOOKS = 50


class GrowthAsynPool(asynpool.AsynPool):
    Worker = GrowthWorker
    ResultHandler = ResumingResultHandler

    @property
    def timers(self) -> dict[Any, float]:
        return {**super().timers, self.maintain_pool: MAINTAIN_EVERY}

    def register_with_event_loop(self, hub: Any) -> None:
        super().register_with_event_loop(hub)
        self._result_handler.resume_reads(hub)

    def flush(self) -> None:
        """The broker connection closes (a warm shutdown or a lost connection).

        Celery forgets every job whose acceptance the parent has not read, and the
        broker gives it again. A job already written to a child, in whole or in part,
        runs there all the same (`_write_to` is set as its writing begins): it stays
        in the cache, so that its acceptance and result are read (at the latest as the
        pool stops) and its message is acknowledged, not run a second time.
        """
        given = {key: job for key, job in self._cache.items()
                 if not job._accepted and job._write_to is not None}
        super().flush()
        for key, job in given.items():
            if job._write_to._is_alive():
                self._cache.setdefault(key, job)

    def _event_process_exit(self, hub: Any, proc: Any) -> None:
        """A child's sentinel closed: replace it, at once or as soon as it can be reaped.

        Celery's handler looks once; a child not reapable yet stays in the pool.
        """
        super()._event_process_exit(hub, proc)
        if proc in self._pool:
            hub.call_later(REAP_EVERY, self._look_for_exit, hub, proc, REAP_LOOKS - 1)

    def _look_for_exit(self, hub: Any, proc: Any, looks_left: int) -> None:
        if proc not in self._pool:
            return  # replaced meanwhile (MAINTAIN_EVERY's check)
        if proc.exitcode is not None:
            self.maintain_pool()
        elif looks_left > 0:
            hub.call_later(REAP_EVERY, self._look_for_exit, hub, proc, looks_left - 1)


class TaskPool(prefork.TaskPool):
    """Celery's prefork pool, recycling children on memory growth, warmed before it forks."""

    Pool = GrowthAsynPool

    def on_start(self) -> None:
        warm_before_fork()  # in the worker parent, before the pool's first fork
        quick_exit_poll()
        super().on_start()


class ThreadTaskPool(thread.TaskPool):
    """Celery's thread pool, where a cancel's `terminate` is a no-op, not an error.

    A thread cannot be killed. A cancelled job ends at once all the same
    (tasks/lifecycle/cancel.py); its running pages end with the server's answer or at
    their own clock (tasks/engines/vlm/vlm_api_engine.py `PageClock`), and their late results are
    dropped because the job has ended.
    """

    def terminate_job(self, pid: Any, signal: Any = None) -> None:
        log.info("a cancelled page's thread runs on to its answer or its time limit; "
                 "its result is dropped")
