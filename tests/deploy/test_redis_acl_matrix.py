"""The Redis users' key matrix, held against a real redis-server with the kit's users.

tasks/redis_users.py builds the users and the matrix from the key families' declarations
(what each role may read and write of each family); docs/security.md shows that
matrix (tests/units/test_redis_users.py holds the page current and the declarations
equal to the users' patterns). Here a redis-server holding exactly the kit's users (written by
scripts/redis_acl.py) is asked with `ACL DRYRUN`, for each user and each key of each
family, every read and write command of the probes the user holds, and its scripts
(`EVALSHA`, `EVALSHA_RO`, `FCALL` naming the key): the server's answers must agree with
the matrix cell by cell. Flower's user is also made to run scripts that name the keys
of messages in flight only in their arguments (Redis checks each call inside a script):
refused. The scripts that reserve a client's jobs in flight, pages and running batches
run as each role that sends jobs, the bindings' (a binding with its deadline, the sweep
of expired ones) as each role that consumes. And the sweep's lock, set without an
expiry, is taken over by the next sweep.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import redis

from tasks.api._quotas import ClientBytes
from tasks.broker import binding_expiry, layout, stored_layout, unacked
from tasks.broker.holders import HolderSweep
from tasks.broker.publishing import PUBLISHED_HEADER
from tasks.client import OcrClient
from tasks.errors import BadRequest, PageQuotaExceeded, QuotaExceeded
from tasks.metrics.queue_depth import QueueDepth
from tasks.records.batches import BatchRecord
from tasks.redis_users import (
    COUNT,
    FAMILIES,
    NONE,
    READ,
    READ_WRITE,
    USERS,
    WRITE,
    RedisUser,
    declared_access,
)
from tasks.settings import Settings
from tasks.state import keys, lua
from tasks.state.batch_store import BatchStore
from tasks.state.corrections import CorrectedPage, Corrections, LineCorrection
from tasks.state.reservations import Reservations
from tasks.state.usage import PageCaps
from tests.redis_tls import AclRedisServer

SHA = "0" * 40
# Commands that read or write one key: each probe is the command, then what follows
# its key.
READS = (("GET",), ("HGET", "f"), ("HGETALL",), ("LINDEX", "0"), ("LRANGE", "0", "1"),
         ("LPOS", "x"), ("ZRANGE", "0", "1"), ("ZSCORE", "m"), ("SMEMBERS",),
         ("GETRANGE", "0", "9"), ("SET", "x", "GET"))
# Commands that read no value: a key's length, whether it exists.
COUNTS = (("LLEN",), ("EXISTS",), ("HLEN",), ("STRLEN",), ("TTL",))
WRITES = (("SET", "x"), ("HSET", "f", "x"), ("ZADD", "1", "m"), ("RPUSH", "x"),
          ("LPUSH", "x"), ("SADD", "x"), ("DEL",), ("HDEL", "f"), ("EXPIRE", "9"),
          ("APPEND", "x"), ("RPOP",), ("PEXPIRE", "9"))
SCRIPTS_WRITE = (("EVALSHA", SHA, "1"), ("FCALL", "f", "1"))
SCRIPTS_READ = (("EVALSHA_RO", SHA, "1"), ("EVAL_RO", "return 1", "1"))
# Writes into a message in flight, a lane or a queue, named only in a script's ARGV.
SCRIPT_WRITE = "return redis.call(ARGV[2], ARGV[1], unpack(ARGV, 3))"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AclRedisServer]:
    started = AclRedisServer(tmp_path_factory.mktemp("acl")).start()
    yield started
    started.stop()


def dryrun(admin: redis.Redis, user: str, command: tuple[str, ...], key: str,
           ) -> bool | None:
    """Whether `user` may send `command` on `key`; None when it holds no such command.

    A script's probe names the key after its count of keys, as Redis reads them.
    """
    name, *rest = command
    args = [*rest, key] if name in ("EVALSHA", "FCALL", "EVALSHA_RO", "EVAL_RO") \
        else [key, *rest]
    try:
        answer = admin.execute_command("ACL", "DRYRUN", user, name, *args)
    except redis.ResponseError as exc:
        answer = str(exc)
    text = answer.decode() if isinstance(answer, bytes) else str(answer)
    if "to run the" in text:
        return None
    return text == "OK"


def allowed(admin: redis.Redis, user: str, probes: tuple[tuple[str, ...], ...],
            key: str) -> list[bool]:
    return [ok for probe in probes if (ok := dryrun(admin, user, probe, key)) is not None]


@pytest.mark.parametrize("user", USERS, ids=lambda u: u.name)
def test_each_role_against_each_key_family_agrees_with_the_matrix(
        server: AclRedisServer, user: RedisUser) -> None:
    admin = server.client()
    wrong = []
    for family in FAMILIES:
        for key in family.examples:
            expected = declared_access(user, family)
            reads = allowed(admin, user.name, READS + SCRIPTS_READ, key)
            writes = allowed(admin, user.name, WRITES + SCRIPTS_WRITE, key)
            counts = allowed(admin, user.name, COUNTS, key)
            seen = READ_WRITE if any(writes) and any(reads) else WRITE if any(writes) \
                else READ if any(reads) else COUNT if any(counts) else NONE
            if seen != expected:
                wrong.append(f"{family.name} {key!r}: the server allows {seen}, "
                             f"the matrix says {expected}")
            scripts = [dryrun(admin, user.name, p, key) for p in SCRIPTS_WRITE]
            if any(ok for ok in scripts if ok is not None) and expected != READ_WRITE:
                wrong.append(f"{family.name} {key!r}: a script may name it")
    assert not wrong, "\n".join(wrong)


IN_FLIGHT_WRITES = (
    (layout.list_held_key("ocr"), "HSET", "1", "forged"),
    (layout.HELD_LISTS_KEY, "SADD", "forged"),
    (layout.UNACKED_MUTEX_KEY, "SET", "x"),
    (layout.SWEEP_LOCK_KEY, "SET", "x"),
    (layout.list_lane_key("ocr", "alice"), "RPUSH", "forged"),
    ("ocr", "RPUSH", "forged"),
    (stored_layout.HELD_KEY, "HSET", "1", "forged"),  # layouts 1 and 2's
    (stored_layout.UNACKED_KEY, "HSET", "1", "forged"),
    (stored_layout.UNACKED_INDEX_KEY, "ZADD", "1", "forged"),
    (stored_layout.HOLDERS_KEY, "HSET", "1", "forged"),
    (stored_layout.LANE_PREFIX + "ocr:alice", "RPUSH", "forged"),
)


@pytest.mark.parametrize("write", IN_FLIGHT_WRITES, ids=lambda w: f"{w[1]} {w[0]}")
def test_flower_cannot_write_a_message_in_flight_a_lane_or_a_queue(
        server: AclRedisServer, write: tuple[str, ...]) -> None:
    key, command, *rest = write
    flower = redis.Redis.from_url(server.url("flower"))
    try:
        with pytest.raises(redis.exceptions.NoPermissionError):
            flower.execute_command(command, key, *rest)
        with pytest.raises(redis.exceptions.ResponseError):  # named in ARGV only
            flower.eval(SCRIPT_WRITE, 0, key, command, *rest)
        assert not server.client().exists(key)
    finally:
        flower.close()


@pytest.mark.parametrize("role", ["worker", "control", "flower"])
def test_the_binding_scripts_run_as_each_consuming_role(server: AclRedisServer,
                                                         role: str) -> None:
    """A consumer of an expiring queue binds it, keeps it, and sweeps dead ones."""
    admin = server.client()
    client = redis.Redis.from_url(server.url(role))
    table, member = f"{layout.BINDING_PREFIX}celeryev", "#\x06\x16\x06\x16celeryev.x"
    try:
        lua.run(client, binding_expiry.bind_command(table, "celeryev", member, 0))
        assert admin.sismember(table, member)
        assert binding_expiry.sweep(client) == 1  # its deadline was now
        assert not admin.exists(table) and not admin.exists(layout.BINDING_EXPIRY_KEY)
    finally:
        client.close()
        admin.delete(table, layout.KOMBU_DEADLINES_KEY)


def test_a_sweep_lock_without_an_expiry_is_taken_over(server: AclRedisServer) -> None:
    admin = server.client()
    admin.set(layout.SWEEP_LOCK_KEY, "x")  # no TTL: no sweeper's
    worker = redis.Redis.from_url(server.url("worker"))
    try:
        sweep = HolderSweep(worker, worker, window=6.0, presence_ttl=30.0)
        admin.sadd(layout.HELD_LISTS_KEY, "ocr")  # a message a gone worker held
        admin.hset(layout.list_held_key("ocr"), "t", unacked.value(
            time.time() - 60, '[{}, "", "ocr"]', holder="gone|1", src="ocr"))
        assert sweep.sweep(time.time()) == ["t"]  # taken: the message back on its queue
        assert admin.get(layout.SWEEP_LOCK_KEY) != b"x"
        assert 0 < admin.pttl(layout.SWEEP_LOCK_KEY) <= 1000 * sweep.interval
        assert admin.lrange("ocr", 0, -1) == [b"{}"]
        # held by a sweeper (an expiry): the next one waits its turn
        assert not HolderSweep(worker, worker, window=6.0, presence_ttl=30.0).sweep()
    finally:
        worker.close()
        admin.delete(layout.SWEEP_LOCK_KEY, layout.HELD_LISTS_KEY, "ocr")


@pytest.mark.parametrize("role", ["api", "control", "worker"])
def test_the_reservation_scripts_run_as_each_sending_role(server: AclRedisServer,
                                                          role: str) -> None:
    """Jobs in flight, page holds and running batches, each taken by its script."""
    sender = redis.Redis.from_url(server.url(role))
    try:
        books = Reservations(sender, 60, lambda ids: [])
        books.take("j1", role, "ocr", "normal", limit=1)
        with pytest.raises(QuotaExceeded):
            books.take("j2", role, "ocr", "normal", limit=1)
        books.take("j1", role, "ocr", "normal", caps=PageCaps(1, None))
        with pytest.raises(PageQuotaExceeded):
            books.take("j2", role, "ocr", "normal", caps=PageCaps(1, None))
        store = BatchStore(sender, 60)
        record = BatchRecord(id="", source="s3://b/", target="s3://o/", client=role)
        assert store.create_within(record, 1) is not None
        assert store.create_within(record, 1) is None
    finally:
        sender.close()


def test_a_correction_and_an_upload_run_as_the_api(server: AclRedisServer) -> None:
    """A line's correction and an upload's piece run as the `api` user.

    The correction reads its page's records and runs its write script; both are
    counted in one sum, and the correction past it is refused.
    """
    api = redis.Redis.from_url(server.url("api"))
    digest = "d" * 64

    def page_of(found: list[LineCorrection]) -> CorrectedPage:
        return CorrectedPage(digest, 1, "the page", None, None, "j1", len(found), 0.0)

    try:
        quota = ClientBytes(api, 60)
        assert quota.append("acl", "ocr:api:upload:acl", b"x" * 100, 1000)
        corrections = Corrections(api, "acl")
        record, found = corrections.correct(digest, 1, (0, 0, 10, 10), "read", "new", "acl",
                                            versions=5, limit=1000, page_of=page_of)
        assert found == [record] == corrections.for_page(digest, 1)
        assert 100 < quota.stored("acl") < 1000
        with pytest.raises(QuotaExceeded):
            corrections.correct(digest, 1, (0, 0, 10, 10), "read", "y" * 900, "acl",
                                versions=5, limit=1000, page_of=page_of)
        assert corrections.for_page(digest, 1) == [record]
    finally:
        api.close()


# A queued message: in a queue's list (a stock client's), a client's lane.
QUEUED = ("ocr", layout.queue_list("ocr-fake", 3), layout.list_lane_key("ocr", "alice"))
TAKES = (("LRANGE", "0", "-1"), ("LINDEX", "-1"), ("LPOS", "m"), ("RPOP",),
         ("LMOVE", "elsewhere", "RIGHT", "LEFT"), ("SORT",), ("DUMP",))
READ_SCRIPT = "return redis.call('LRANGE', KEYS[1], 0, -1)"


@pytest.mark.parametrize("role", ["api", "beat", "client", "flower", "keda", "metrics"])
def test_only_the_consumers_read_a_queued_message(server: AclRedisServer, role: str) -> None:
    """A role that sends or watches may push and count, never read a message back."""
    admin = server.client()
    connection = redis.Redis.from_url(server.url(role))
    try:
        for key in QUEUED:
            admin.rpush(key, "m")
            for command, *rest in TAKES:
                with pytest.raises(redis.ResponseError):
                    connection.execute_command(command, key, *rest)
            for run in (connection.eval, connection.eval_ro):
                with pytest.raises(redis.ResponseError):
                    run(READ_SCRIPT, 1, key)
            assert admin.lrange(key, 0, -1) == [b"m"]
            if role in layout.APPENDERS:  # a sender still sends, and counts
                assert connection.lpush(key, "more") == connection.llen(key) == 2
            elif key in QUEUED[:2] or role == "metrics":  # a watcher counts them
                assert connection.llen(key) == 1
    finally:
        connection.close()
        admin.delete(*QUEUED)


@pytest.mark.parametrize("role", ["flower", "metrics"])
def test_flower_and_the_exporter_count_the_waiting_messages_as_their_own_users(
        server: AclRedisServer, role: str) -> None:
    """Flower's broker page and the exporter count a queue's list and its clients' lanes."""
    admin = server.client()
    settings = Settings.from_env({"REDIS_URL": server.url("admin")})
    app = OcrClient(settings).app
    watcher = redis.Redis.from_url(server.url(role))
    try:
        for client in ("alice", "bob", None):
            app.send_task("ocr.document", kwargs={}, queue="ocr-fake", priority=3,
                          headers={"ocr_client": client} if client else {})
        assert QueueDepth(watcher, {}).waiting(["ocr-fake"]) == {"ocr-fake": 3}
    finally:
        admin.flushdb()
        app.close()
        watcher.close()


@pytest.mark.parametrize("role", ["worker", "control"])
def test_each_consumer_records_the_queues_oldest_ages_as_its_own_user(
        server: AclRedisServer, role: str) -> None:
    """Whichever worker parent sweeps this interval looks at the oldest waiting message.

    The look is a read-only script (EVALSHA_RO); the exporter reads what it stored.
    """
    admin = server.client()
    connection = redis.Redis.from_url(server.url(role))
    exporter = redis.Redis.from_url(server.url("metrics"))
    try:
        admin.lpush("ocr", json.dumps({"body": "", "headers": {PUBLISHED_HEADER: 1000.0},
                                       "properties": {"delivery_tag": "t-1"}}))
        QueueDepth(connection, {}).record_oldest(connection, ["ocr"], 60, now=1010.0)
        assert QueueDepth(exporter, {}).recorded_ages(exporter, ["ocr"], now=1030.0) \
            == {"ocr": 30.0}
    finally:
        admin.delete("ocr", keys.METRICS_OLDEST_KEY)
        connection.close()
        exporter.close()


def test_a_client_stores_its_input_and_touches_no_one_elses(server: AclRedisServer) -> None:
    """The `client` user writes its own input and lists its job, and reads neither back.

    Another sender's input it cannot read; an input uploaded through the API it can
    neither read nor overwrite; the job lists it adds to but cannot read.
    """
    admin = server.client()
    client = redis.Redis.from_url(server.url("client"))
    mine, theirs = keys.BLOB_PREFIX + "1" * 32, keys.BLOB_PREFIX + "2" * 32
    upload = keys.api_blob_key("alice", "3" * 32)
    try:
        admin.set(theirs, b"their input")
        admin.set(upload, b"alice's upload")
        assert client.set(mine, b"my input", ex=60)
        for key in (mine, theirs, upload):
            for command, *rest in (("GET",), ("GETRANGE", "0", "-1"), ("DUMP",)):
                with pytest.raises(redis.ResponseError):
                    client.execute_command(command, key, *rest)
        for write in (lambda: client.set(upload, b"forged"), lambda: client.delete(upload),
                      lambda: client.append(upload, b"forged"),
                      lambda: client.rename(upload, mine)):
            with pytest.raises(redis.ResponseError):
                write()
        assert admin.get(upload) == b"alice's upload" and admin.get(mine) == b"my input"
        assert client.zadd(keys.jobs_client_key("bob"), {"j1": 1.0}) == 1
        with pytest.raises(redis.ResponseError):
            client.zrange(keys.JOBS_ALL_KEY, 0, -1)
    finally:
        client.close()
        admin.delete(mine, theirs, upload, keys.jobs_client_key("bob"))


def test_a_short_id_under_the_client_user_asks_for_the_whole_id(server: AclRedisServer) -> None:
    """The `client` user reads no job index: a short id asks for the whole id.

    A coded error (`bad_request`), never a raw NOPERM.
    """
    client = OcrClient(Settings.from_env({"REDIS_URL": server.url("client")}))
    try:
        with pytest.raises(BadRequest, match="give the whole id"):
            client.full_id("0123abcd")
        assert client.full_id("0" * 36) == "0" * 36  # a whole id is not looked up
    finally:
        client.close()
