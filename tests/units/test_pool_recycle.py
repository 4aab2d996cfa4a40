"""A recycled pool child's replacement starts within a quarter second, exit missed or not.

Celery starts a replacement when a child's process sentinel closes; where the sentinel
closes before the kernel lets the child be reaped, only the pool's periodic check
starts it (celery/celery#9588), every 5 s in Celery: a task written to the child just
before it exited waited that long (the null-engine ceiling of bench/queue_cost.py lost
3-4 s in about one round of four; bench/README.md). The worker's pool checks every
`MAINTAIN_EVERY` s, and looks for a child whose sentinel closed before it could be
reaped every `REAP_EVERY` s until it can be (fakes of the loop and the children).

A replacement's start and first page load nothing the worker parent could have loaded
before it forked (`warm_before_fork`): checked in a fresh interpreter, which forks
the way the pool does and records the modules each child imports. And Celery's
collection of the parent's garbage before each fork walks only what the parent made
since (the rest frozen): it walked the whole heap, ~150 ms a replacement.

Children that start together take tasks in turn; each child's task limit is drawn a
little below OCR_MAX_TASKS_PER_CHILD (`staggered`), so that they do not all recycle at
once, the worker then reading nothing while every child loads its engine again.

A retiring child waits until the worker parent has read its last result; billiard
looks every 0.1 s, the pool every `EXIT_POLL` s with the same patience: checked on
billiard's own wait, its sleeps recorded.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest
from billiard import pool as billiard_pool
from celery.concurrency import asynpool, prefork

from tasks.queue import pool
from tasks.queue.pool import (
    EXIT_PATIENCE,
    EXIT_POLL,
    MAINTAIN_EVERY,
    REAP_EVERY,
    REAP_LOOKS,
    TASKS_STAGGER,
    GrowthAsynPool,
    GrowthWorker,
    TaskPool,
    quick_exit_poll,
    staggered,
)


def test_the_pool_checks_for_exited_children_every_quarter_second() -> None:
    pool = object.__new__(GrowthAsynPool)  # the timers read no state of the pool
    ours = {getattr(fun, "__name__", ""): every for fun, every in pool.timers.items()}
    celerys = {getattr(fun, "__name__", ""): every
               for fun, every in asynpool.AsynPool.timers.fget(pool).items()}
    assert ours["maintain_pool"] == MAINTAIN_EVERY <= 0.25 < celerys["maintain_pool"]
    assert set(ours) == set(celerys)  # Celery's other timers kept


class LoopHub:
    """Fake of Celery's event loop: what the pool asks it to call later, not called."""

    def __init__(self) -> None:
        self.later: list[tuple[float, Any, tuple[Any, ...]]] = []

    def call_later(self, delay: float, fun: Any, *args: Any) -> None:
        self.later.append((delay, fun, args))

    def remove(self, fd: int) -> None:
        pass


def test_a_child_not_reapable_when_its_sentinel_closes_is_looked_for_again() -> None:
    """Replaced as soon as the kernel lets it be reaped, not at the next periodic check."""
    pool = object.__new__(GrowthAsynPool)
    child = SimpleNamespace(exitcode=None, _sentinel_poll=None)
    pool._pool = [child]
    maintained: list[int] = []

    def maintain_pool() -> None:  # billiard's: reaps (and replaces) the exited children
        maintained.append(len(pool._pool))
        pool._pool = [p for p in pool._pool if p.exitcode is None]

    pool.maintain_pool = maintain_pool  # type: ignore[method-assign]
    hub = LoopHub()
    pool._event_process_exit(hub, child)  # Celery's look: the child is still exiting
    assert maintained == [1] and pool._pool == [child]
    for _ in range(3):
        delay, look, args = hub.later.pop()
        assert delay == REAP_EVERY and not hub.later
        look(*args)
    assert maintained == [1]  # each look found it exiting: no replacement yet
    child.exitcode = 0
    hub.later.pop()[1](*args)
    assert maintained == [1, 1] and pool._pool == [] and not hub.later
    pool._pool = [child]
    hub.later.clear()
    child.exitcode = None
    pool._event_process_exit(hub, child)
    for _ in range(REAP_LOOKS):  # looked for REAP_LOOKS times in all
        delay, look, args = hub.later.pop()
        look(*args)
    assert not hub.later  # then the periodic check is left to find it


def test_a_child_reaped_at_its_sentinel_is_not_looked_for() -> None:
    pool = object.__new__(GrowthAsynPool)
    child = SimpleNamespace(exitcode=0, _sentinel_poll=None)
    pool._pool = [child]
    pool.maintain_pool = lambda: setattr(pool, "_pool", [])  # type: ignore[method-assign]
    hub = LoopHub()
    pool._event_process_exit(hub, child)
    assert pool._pool == [] and not hub.later


# What a pool child does at its start and its first page that loads modules lazily:
# billiard's parent-death signal (cffi's C parser where cffi is installed, as here),
# and a page's WebP preview (Pillow's plugins).
CHILD = textwrap.dedent("""
    import gc, os, sys
    import tasks.queue.app
    from billiard.util import set_pdeathsig
    from PIL import Image
    from tasks.pipeline.previews import page_preview
    from tasks.queue.pool import warm_before_fork
    if sys.argv[1] == "warm":
        warm_before_fork()
    read, write = os.pipe()
    if os.fork() == 0:
        before = set(sys.modules)
        set_pdeathsig(9)
        with Image.new("RGB", (400, 300), "white") as page:
            page_preview(page)
        os.write(write, " ".join(sorted(set(sys.modules) - before)).encode())
        os._exit(0)
    os.close(write)
    print(os.read(read, 65536).decode())
    print(len(gc.get_objects()), gc.get_freeze_count())
""")


def fork_once(mode: str) -> tuple[list[str], int, int]:
    """The modules a forked child imported; the parent's collected and frozen objects."""
    done = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True,
                          text=True, timeout=120, check=True)
    imported, counts = done.stdout.rstrip("\n").split("\n")
    tracked, frozen = counts.split()
    return imported.split(), int(tracked), int(frozen)


def test_a_forked_child_loads_no_module_the_parent_warmed() -> None:
    cold, tracked_cold, _ = fork_once("cold")
    assert "cffi.cparser" in cold and "PIL.WebPImagePlugin" in cold  # what it spares
    warm, tracked, frozen = fork_once("warm")
    assert warm == []
    assert tracked < frozen / 20 and tracked < tracked_cold / 20


def test_the_prefork_pool_warms_its_parent_before_it_forks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(pool, "warm_before_fork", lambda: calls.append("warm"))
    monkeypatch.setattr(pool, "quick_exit_poll", lambda: calls.append("exit poll"))
    monkeypatch.setattr(prefork.TaskPool, "on_start", lambda self: calls.append("fork"))
    TaskPool.on_start(object.__new__(TaskPool))  # its start reads no state of the pool
    assert calls == ["warm", "exit poll", "fork"]


class ReadCounter:
    """billiard's shared count of a child's results the parent has read, read `after` looks."""

    def __init__(self, after: int | None) -> None:
        self.looks, self.after = 0, after

    @property
    def value(self) -> int:
        self.looks += 1
        return 1 if self.after is not None and self.looks > self.after else 0


@pytest.mark.parametrize("after", [3, None])
def test_a_retiring_child_looks_for_its_last_result_read_every_few_ms(
        monkeypatch: pytest.MonkeyPatch, after: int | None) -> None:
    """Read after three looks: three short sleeps. Never read: billiard's 30 s, then gone."""
    for name in ("GUARANTEE_MESSAGE_CONSUMPTION_RETRY_INTERVAL",
                 "GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT"):
        monkeypatch.setattr(billiard_pool, name, getattr(billiard_pool, name))
    slept: list[float] = []
    monkeypatch.setattr(billiard_pool.time, "sleep", slept.append)
    child = object.__new__(GrowthWorker)
    child.on_ready_counter = ReadCounter(after)
    billiard_pool.Worker._ensure_messages_consumed(child, completed=1)
    assert set(slept) == {0.1}  # billiard's own look: every 0.1 s
    assert len(slept) == (300 if after is None else after)
    quick_exit_poll()
    child.on_ready_counter = ReadCounter(after)
    slept.clear()
    consumed = billiard_pool.Worker._ensure_messages_consumed(child, completed=1)
    assert set(slept) == {EXIT_POLL}
    if after is None:
        assert not consumed and sum(slept) == pytest.approx(EXIT_PATIENCE)
    else:
        assert consumed and len(slept) == after


def test_a_childs_task_limit_is_drawn_a_little_below_the_setting() -> None:
    for setting in (1, 2, 3, 10, 200):
        limits = {staggered(setting, n / 100) for n in range(100)}
        assert max(limits) == staggered(setting, 0.0) == setting
        assert min(limits) >= max(1, setting * (1 - TASKS_STAGGER))
    assert len({staggered(200, n / 100) for n in range(100)}) > 30


def child_started(max_tasks: int | None) -> GrowthWorker:
    """A pool child's `on_loop_start` run, its pipe to the parent a list."""
    child = object.__new__(GrowthWorker)  # its start reads only these
    sent: list[object] = []
    child.maxtasks, child.max_memory_per_child = max_tasks, None
    child.outq = SimpleNamespace(put=sent.append)
    child.on_loop_start(pid=4242)
    assert sent  # its WORKER_UP went to the parent as before
    return child


def test_children_started_together_recycle_at_different_counts() -> None:
    limits = [child_started(200).maxtasks for _ in range(20)]
    assert all(160 <= limit <= 200 for limit in limits) and len(set(limits)) > 1
    assert child_started(None).maxtasks is None  # 0: never recycled, as before
