"""What a lost broker connection left is settled by the next channel, by the server it reaches.

The rules of tasks/broker/qos.py (`settle`) against a recording stand-in for kombu's QoS
and Redis's held records (the real thing runs under failover in
tests/queue/test_failover.py): an acknowledgement is done only on the server process
that ran the task's writes, else its message goes back; acknowledgements just before
a loss are looked at again on a new server only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tasks.broker import qos as unsettled


@dataclass
class Recorded:
    """A stand-in for kombu's QoS and a Redis client: the held records and what was done."""

    unacked: set[str] = field(default_factory=set)
    acked: list[str] = field(default_factory=list)
    restored: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for tag in self.unacked:  # each held where the fetch told
            unsettled.hold(tag, "{q}:held")

    def unrecord(self, tag: str, pipe: Any) -> Any:
        self.acked.append(tag)
        self.unacked.discard(tag)
        return pipe

    def restore_by_tag(self, tag: str, client: Any) -> None:
        self.restored.append(tag)
        self.unacked.discard(tag)

    def hexists(self, key: str, tag: str) -> bool:
        return tag in self.unacked

    def pipeline(self, transaction: bool = True) -> Any:
        return type("Pipe", (), {"execute": lambda self: []})()


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    unsettled._acks.clear()
    unsettled._restores.clear()
    unsettled._recent.clear()
    unsettled._held_in.clear()
    yield
    unsettled._acks.clear()
    unsettled._restores.clear()
    unsettled._recent.clear()
    unsettled._held_in.clear()


def settle(run_id: str, server: Recorded) -> None:
    unsettled.connected(run_id)
    unsettled.settle(server, server, (ConnectionError,))


def test_a_failed_ack_is_done_on_the_same_server_and_restored_on_another() -> None:
    unsettled.connected("old")
    unsettled.defer_ack("t1")
    same = Recorded(unacked={"t1"})
    settle("old", same)  # a reconnection to the same server process: acknowledged
    assert same.acked == ["t1"] and same.restored == []
    unsettled.connected("old")
    unsettled.defer_ack("t2")
    promoted = Recorded(unacked={"t2"})
    settle("new", promoted)  # a failover: the task's writes may be gone, it runs again
    assert promoted.restored == ["t2"] and promoted.acked == []
    assert not unsettled.pending()


def test_recent_acks_come_back_only_where_they_were_lost() -> None:
    unsettled.connected("old")
    unsettled.acked("kept")
    unsettled.acked("lost")
    unsettled.lost()
    promoted = Recorded(unacked={"lost"})  # the primary's tail: one ack never replicated
    settle("new", promoted)
    assert promoted.restored == ["lost"] and promoted.acked == []
    unsettled.connected("old")
    unsettled.acked("again")
    unsettled.lost()
    same = Recorded(unacked={"again"})  # same server: that ack is there, nothing to do
    settle("old", same)
    assert same.restored == [] and same.acked == []


def test_what_fails_again_waits_for_the_next_channel() -> None:
    unsettled.connected("old")
    unsettled.defer_restore("t3")

    class Gone(Recorded):
        def hexists(self, key: str, tag: str) -> bool:
            raise ConnectionError("down again")

    settle("new", Gone(unacked={"t3"}))
    assert unsettled.pending()
    later = Recorded(unacked={"t3"})
    settle("newer", later)
    assert later.restored == ["t3"] and not unsettled.pending()


def test_a_running_task_is_not_restored_at_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    message = type("Message", (), {})
    running, waiting = message(), message()
    running.headers = {"id": "job-running"}
    waiting.headers = {"id": "job-waiting"}
    started, not_started = unsettled.split_running({"a": running, "b": waiting},
                                                   {"job-running"})
    assert (started, not_started) == (["a"], ["b"])
