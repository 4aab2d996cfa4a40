"""The publishes a worker keeps until a replica confirms them (pending_publishes.py)."""

from __future__ import annotations

import logging

import pytest

from tasks.broker import pending_publishes
from tasks.broker.pending_publishes import (
    KEPT_SECONDS,
    LOOK_SECONDS,
    PendingPublish,
    PendingPublishes,
)

A, B = ("10.0.0.1", 6379, None), ("10.0.0.2", 6379, None)


def publish(at: float, queue: str = "ocr") -> PendingPublish:
    return PendingPublish(at, queue, [["LPUSH", queue, f"message at {at}"]])


def test_a_full_wait_confirms_what_went_to_that_server_before_it() -> None:
    kept = PendingPublishes()
    for at in (1.0, 2.0, 3.0):
        kept.add(A, publish(at))
    kept.add(B, publish(1.5))
    kept.confirmed(A, 2.5)  # a WAIT begun at 2.5 on A: 1.0 and 2.0 are on a replica
    assert [p.at for p in kept.take(A)] == [3.0]
    assert [p.at for p in kept.take(B)] == [1.5]  # another server's: not confirmed by it


def test_only_other_servers_are_due_at_most_once_a_look() -> None:
    kept = PendingPublishes()
    kept.add(A, publish(10.0))
    assert kept.due(A, 10.5) == []  # still written to: nothing switched
    assert kept.due(B, 10.5) == [A]
    kept.looked_up(A, 10.5)  # A is still the primary
    assert kept.due(B, 10.5 + LOOK_SECONDS / 2) == []
    assert kept.due(B, 10.5 + LOOK_SECONDS) == [A]


def test_publishes_are_kept_a_while_only() -> None:
    kept = PendingPublishes()
    kept.add(A, publish(0.0))
    kept.add(A, publish(KEPT_SECONDS / 2))
    assert kept.due(B, KEPT_SECONDS + 1) == [A]
    assert [p.at for p in kept.take(A)] == [KEPT_SECONDS / 2]
    kept.add(A, publish(0.0))
    assert kept.due(B, KEPT_SECONDS * 3) == []
    assert len(kept) == 0


def test_the_oldest_is_dropped_past_the_bound_and_said(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(pending_publishes, "KEPT_MESSAGES", 3)
    kept = PendingPublishes()
    kept.add(A, publish(2.0))
    kept.add(B, publish(1.0, "ocr-first"))
    kept.add(A, publish(3.0))
    with caplog.at_level(logging.WARNING, logger=pending_publishes.__name__):
        kept.add(A, publish(4.0))
    assert len(kept) == 3 and kept.take(B) == []
    assert "ocr-first" in caplog.text


def test_what_failed_to_go_again_is_kept_first() -> None:
    kept = PendingPublishes()
    taken = [publish(1.0), publish(2.0)]
    kept.add(A, publish(5.0))
    kept.give_back(A, taken)
    assert [p.at for p in kept.take(A)] == [1.0, 2.0, 5.0]


def test_a_forked_child_sends_none_of_its_parents_again() -> None:
    import os

    kept = PendingPublishes()
    kept.add(A, publish(1.0))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        due = kept.due(B, 2.0)
        kept.add(B, publish(2.0))
        os.write(write, f"{due}|{len(kept)}".encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 100).decode() == "[]|1"
    assert kept.due(B, 2.0) == [A]  # the parent's own
