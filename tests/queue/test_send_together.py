"""A job's records and its message in one transaction, where the broker is the same database.

On a redis-server of the test's own, read in order by MONITOR, with no worker (the
message stays in its lane): the sender (tasks/queue/sender.py) queues the job's input,
record and index entries, then the transport's push of its message
(`PublishingChannel.riding`, tasks/broker/publishing.py), in one MULTI; a push script
the server lost is loaded and sent after the records; a record refused as the message
went in withdraws the job; a broker on another database gets records first, then the
message, as two round trips. A broker script its server loses again as it is loaded is
loaded again, up to `scripts.LOADS` times (tasks/broker/scripts.py).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from tasks.broker import lanes, layout, scripts
from tasks.broker.publishing import same_database
from tasks.client import OcrClient
from tasks.errors import TransientError
from tasks.state.keys import JOBS_ALL_KEY, job_key
from tests.harness import make_client
from tests.image_fixtures import png

PUSH_SHA = lanes.PUSH.sha
LANE = layout.lane_key(layout.queue_list("ocr", 3), "root")


@pytest.fixture
def r(lone_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(lone_redis_url)
    yield client
    client.close()


@pytest.fixture
def client(lone_redis_url: str) -> Iterator[OcrClient]:
    made = make_client(lone_redis_url)
    yield made
    made.close()


class Monitor:
    """Every command the server runs while it is open, in order (MONITOR)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r
        self.seen: list[dict[str, Any]] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        with self.r.monitor() as monitor:
            self._ready.set()
            for seen in monitor.listen():
                if seen["command"] == "ECHO monitor-done":
                    return
                self.seen.append(seen)

    def __enter__(self) -> Monitor:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.r.echo("monitor-done")
        self._thread.join(10)
        assert not self._thread.is_alive()

    def words(self, client_type: str | None = "tcp") -> list[list[str]]:
        """Each command's words; those a client sent (`tcp`), or all (None)."""
        return [s["command"].split() for s in self.seen
                if client_type is None or s.get("client_type") == client_type]


def test_a_jobs_records_and_message_go_in_one_transaction(client: OcrClient,
                                                          r: redis.Redis) -> None:
    client.submit(png(1), filename="first.png")  # the push script loaded on this server
    with Monitor(r) as monitor:
        job = client.submit(png(2), filename="second.png")
    names = [w[0] for w in monitor.words()]
    # the connection's own writes, records first, the push last, between MULTI and EXEC
    first, last = names.index("MULTI"), names.index("EXEC")
    inside = monitor.words()[first + 1:last]
    assert [w[0] for w in inside[:3]] == ["SET", "HSET", "EXPIRE"], inside
    assert inside[1][1] == job_key(job)
    assert inside[-1][:2] == ["EVALSHA", PUSH_SHA], inside
    assert "ZADD" in [w[0] for w in inside]
    writes = {"SET", "HSET", "EXPIRE", "ZADD", "EVALSHA", "LPUSH", "RPUSH", "MULTI", "EXEC"}
    assert [n for n in names[:first] + names[last + 1:] if n in writes] == [], names
    assert r.llen(LANE) == 2
    assert r.hget(job_key(job), "filename") == b"second.png"
    assert r.ttl(job_key(job)) > 0


def test_a_push_script_the_server_lost_is_loaded_and_sent_after_the_records(
        client: OcrClient, r: redis.Redis) -> None:
    client.submit(png(1), filename="first.png")
    r.script_flush()  # a restart, a failover to a replica that never ran it
    with Monitor(r) as monitor:
        job = client.submit(png(2), filename="second.png")
    names = [w[0] for w in monitor.words()]
    exec_at = names.index("EXEC")
    after = [w[:2] for w in monitor.words()[exec_at + 1:]]
    assert ["SCRIPT", "LOAD"] in after and ["EVALSHA", PUSH_SHA] in after, after
    assert after.index(["SCRIPT", "LOAD"]) < after.index(["EVALSHA", PUSH_SHA])
    assert r.llen(LANE) == 2
    assert r.hget(job_key(job), "filename") == b"second.png"


def test_a_record_refused_as_the_message_went_in_withdraws_the_job(
        client: OcrClient, r: redis.Redis) -> None:
    r.set(JOBS_ALL_KEY, "not a sorted set")  # its ZADD fails inside the transaction
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.submit(png(1), filename="one.png")
    assert r.llen(LANE) == 1  # the message went in with the other records
    (withdrawn,) = [k for k in r.scan_iter("ocr:job:*") if r.type(k) == b"hash"]
    assert r.hget(withdrawn, "cancelled") == b"1"  # should it run, it never starts


def test_a_broker_on_another_database_gets_the_records_first_then_the_message(
        lone_redis_url: str, r: redis.Redis) -> None:
    broker_url = lone_redis_url.rsplit("/", 1)[0] + "/2"
    other = make_client(lone_redis_url, BROKER_URL=broker_url)
    try:
        with Monitor(r) as monitor:
            job = other.submit(png(1), filename="one.png")
    finally:
        other.close()
    words = monitor.words(None)  # a script's own commands too
    assert ["MULTI"] not in words
    record = next(i for i, w in enumerate(words) if w[:2] == ["HSET", job_key(job)])
    push = next(i for i, w in enumerate(words) if w[:2] == ["EVALSHA", PUSH_SHA])
    assert record < push, words
    assert r.hget(job_key(job), "filename") == b"one.png"
    assert redis.Redis.from_url(broker_url).llen(LANE) == 1
    assert r.llen(LANE) == 0


def test_same_database_asks_one_address_database_user_and_kind() -> None:
    def pool(url: str) -> redis.ConnectionPool:
        return redis.ConnectionPool.from_url(url)

    assert same_database(pool("redis://h:6379/1"), pool("redis://h:6379/1"))
    assert not same_database(pool("redis://h:6379/1"), pool("redis://h:6379/2"))
    assert not same_database(pool("redis://h:6379/1"), pool("redis://h:6380/1"))
    assert not same_database(pool("redis://a@h:6379/1"), pool("redis://b@h:6379/1"))
    assert not same_database(pool("redis://h:6379/1"), pool("rediss://h:6379/1"))
    assert same_database(pool("unix:///tmp/r.sock?db=1"), pool("unix:///tmp/r.sock?db=1"))
    assert not same_database(pool("unix:///tmp/r.sock?db=1"), pool("unix:///tmp/s.sock?db=1"))


class LosingRedis(redis.Redis):
    """A real Redis client whose server loses each of its first `losses` script loads.

    As a restart or failover between a SCRIPT LOAD and the EVALSHA after it does.
    """

    losses = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        answer = super().execute_command(*args, **options)
        if args[:2] == ("SCRIPT", "LOAD") and self.losses:
            self.losses -= 1
            self.script_flush()
        return answer


def test_a_broker_script_lost_again_as_it_is_loaded_is_loaded_again(
        lone_redis_url: str) -> None:
    losing = LosingRedis(connection_pool=redis.ConnectionPool.from_url(lone_redis_url))
    push = lanes.push_command("", layout.queue_list("ocr", 3), 3, "root", "{}")
    losing.losses = scripts.LOADS - 1
    scripts.run(losing, push)
    assert losing.llen(LANE) == 1
    losing.script_flush()
    losing.losses = scripts.LOADS
    with pytest.raises(redis.exceptions.NoScriptError):
        scripts.run(losing, push)
    assert losing.llen(LANE) == 1


def test_a_sent_push_lost_again_as_it_is_loaded_is_transient(
        client: OcrClient, r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    client.submit(png(1), filename="first.png")
    r.script_flush()
    lost = scripts.LOADS

    def losing_load(self: scripts.Script, on: Any) -> None:
        nonlocal lost
        on.execute_command("SCRIPT", "LOAD", self.text)
        if lost:
            lost -= 1
            on.script_flush()

    monkeypatch.setattr(scripts.Script, "load", losing_load)
    with pytest.raises(TransientError) as raised:
        client.submit(png(2), filename="second.png")
    assert raised.value.retryable
    assert r.llen(LANE) == 1  # the second job's message never went in
