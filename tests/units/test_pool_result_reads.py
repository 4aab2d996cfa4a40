"""A pool child's result read in part when the worker's event loop resets is read on.

On a lost broker connection Celery's event loop resets its hub (every reader dropped)
and registers the pool again. The worker's result handler (tasks/queue/pool.py) goes on
with the message it had read in part; Celery's own reads that pipe afresh, from inside
the message. A real pipe, a real kombu hub, a real pickled result message.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from celery.concurrency import asynpool
from kombu.asynchronous import Hub

from tasks.queue.pool import ResumingResultHandler

RESULT = (3, ("job-1", 0, (True, "x" * 2000)))  # (READY, (job, i, (success, value)))


def handler(kind: type[asynpool.ResultHandler], fd: int,
            received: list[Any]) -> asynpool.ResultHandler:
    made = kind(None, None, {}, None, None, None, None, None, None,
                fileno_to_outq={fd: object()}, on_process_alive=None)
    made.on_state_change = received.append
    return made


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    os.close(read)
    os.close(write)


def read_across_a_reset(kind: type[asynpool.ResultHandler], pipe: tuple[int, int]) -> list[Any]:
    """Half a message, the hub reset and the pool registered again, then the rest."""
    read, write = pipe
    body = pickle.dumps(RESULT)
    message = struct.pack(">i", len(body)) + body
    received: list[Any] = []
    results = handler(kind, read, received)
    hub = Hub()
    try:
        results.register_with_event_loop(hub)
        os.write(write, message[:len(message) // 2])
        results.handle_event(read)  # reads the first half, then waits on the pipe
        assert not received
        hub.reset()  # the broker connection was lost
        results.register_with_event_loop(hub)  # as AsynPool.register_with_event_loop
        hub.add_reader(read, results.handle_event, read)
        if isinstance(results, ResumingResultHandler):
            results.resume_reads(hub)
        os.write(write, message[len(message) // 2:])
        callback, args = hub.readers[read]
        try:
            callback(*args) if args else next(callback)
        except (StopIteration, OSError, EOFError, pickle.UnpicklingError):
            pass
        return received
    finally:
        hub.close()


def test_a_result_read_in_part_is_read_on_after_the_loop_resets(
        pipe: tuple[int, int]) -> None:
    assert read_across_a_reset(ResumingResultHandler, pipe) == [RESULT]


def test_celerys_own_handler_reads_from_inside_the_message(pipe: tuple[int, int]) -> None:
    """Why the pool keeps its reads: Celery's handler never gets the result."""
    assert read_across_a_reset(asynpool.ResultHandler, pipe) != [RESULT]
