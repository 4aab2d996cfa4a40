"""The one owner of "which Redis": URLs read into targets, Celery's view, real connections.

Against a real redis-server and a real Sentinel (`redis-server --sentinel`) on free
loopback ports.
"""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel

from tasks.broker.sentinel_transport import SentinelChannel
from tasks.errors import TransientError
from tasks.queue.celery_config import celery_config
from tasks.records.redis_target import RedisTarget
from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect, new_client
from tasks.state.replicas import check_kept, hold_kept, kept
from tests.harness import RedisServer, eventually, free_port, stop_group


def test_a_direct_url_is_its_own_target() -> None:
    target = Settings.from_env({"REDIS_URL": "redis://u:p%40ss@10.0.0.1:6380/3"}).redis_target
    assert (target.sentinels, target.db, target.username, target.password, target.tls) == \
        ((), 3, "u", "p@ss", False)
    assert target.min_replicas == 0
    assert target.masked == "redis://u:***@10.0.0.1:6380/3"


@pytest.mark.parametrize(("broker", "same"), [
    ("redis://u:pw@10.0.0.1:6380/5", True),  # another db: one server's PUB/SUB
    ("redis://u:pw@10.0.0.1:6380", True),
    ("redis://u:pw@10.0.0.1:6381/3", False),
    ("redis://v:pw@10.0.0.1:6380/3", False),  # another user: maybe other rights
    ("rediss://u:pw@10.0.0.1:6380/3", False),
    ("sentinel://u:pw@10.0.0.1:6380/3", False),
])
def test_one_server_is_told_whatever_its_db(broker: str, same: bool) -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://u:pw@10.0.0.1:6380/3",
                                  "BROKER_URL": broker})
    assert settings.broker_target is not None
    assert settings.broker_target.same_server(settings.redis_target) is same


def test_a_sentinel_url_names_every_sentinel_and_the_primary() -> None:
    env = {"REDIS_URL": "sentinel://:pw@s1:26379;sentinel://s2;sentinel://s3:26380/2",
           "OCR_REDIS_SENTINEL_MASTER": "ocr", "OCR_REDIS_SENTINEL_PASSWORD": "spw"}
    target = Settings.from_env(env).redis_target
    assert target.sentinels == (("s1", 26379), ("s2", 26379), ("s3", 26380))
    assert (target.master, target.db, target.password, target.sentinel_password) == \
        ("ocr", 2, "pw", "spw")
    assert target.min_replicas == 1  # a primary with replicas: a write is kept on one
    env["OCR_REDIS_MIN_REPLICAS"] = "0"
    assert Settings.from_env(env).redis_target.min_replicas == 0


@pytest.mark.parametrize(("env", "named"), [
    ({"REDIS_URL": "http://127.0.0.1:6379/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://127.0.0.1:6379/zero"}, "REDIS_URL"),
    ({"REDIS_URL": "sentinel://s1:26379;redis://s2:26379"}, "REDIS_URL"),
    ({"BROKER_URL": "kafka://k:9092"}, "BROKER_URL"),
    ({"REDIS_URL": "sentinel://s1", "OCR_REDIS_SENTINEL_MASTER": ""}, "REDIS_URL"),
    ({"OCR_REDIS_TLS_CERT_FILE": "/c.pem"}, "REDIS_URL"),
    ({"OCR_REDIS_MIN_REPLICAS": "-1"}, "OCR_REDIS_MIN_REPLICAS"),
])
def test_an_unusable_redis_setting_is_refused_by_name(env: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named):
        Settings.from_env(env)


def test_rediss_means_verified_tls_for_broker_and_backend_alike() -> None:
    config = celery_config(Settings.from_env({"REDIS_URL": "rediss://r.example:6380/0",
                                              "OCR_REDIS_TLS_CA_FILE": "/ca.pem"}))
    for key in ("broker_use_ssl", "redis_backend_use_ssl"):
        assert config[key]["ssl_cert_reqs"] == ssl.CERT_REQUIRED
        assert config[key]["ssl_ca_certs"] == "/ca.pem"
    assert config["broker_transport"] == "tasks.broker.transport:Transport"
    plain = celery_config(Settings.from_env({"REDIS_URL": "redis://r:6379/0"}))
    assert "broker_use_ssl" not in plain and "redis_backend_use_ssl" not in plain


def test_a_sentinel_broker_keeps_the_project_transport() -> None:
    config = celery_config(Settings.from_env({
        "REDIS_URL": "sentinel://s1:26379;sentinel://s2:26379/0",
        "OCR_REDIS_SENTINEL_MASTER": "ocr", "OCR_REDIS_SENTINEL_PASSWORD": "spw"}))
    assert config["broker_transport"] == "tasks.broker.sentinel_transport:SentinelTransport"
    # One Sentinel in the URL (kombu would switch to the next part's own transport on a
    # failed connection), every Sentinel in the transport's options.
    assert config["broker_url"] == "sentinel://s1:26379/0"
    options = config["broker_transport_options"]
    assert options["ocr_sentinels"] == [["s1", 26379], ["s2", 26379]]
    assert options["master_name"] == "ocr"
    assert options["sentinel_kwargs"]["password"] == "spw"
    assert "ocr_max_message_bytes" in options  # dead-letters and size checks kept
    assert config["result_backend_transport_options"]["master_name"] == "ocr"


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[tuple[RedisServer, int]]:
    """A primary and one Sentinel watching it (quorum 1), both real processes."""
    primary = RedisServer(tmp_path)
    primary.start()
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                    f"sentinel monitor ocr 127.0.0.1 {primary.port} 1\n")
    proc = subprocess.Popen(["redis-server", str(conf), "--sentinel"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        yield primary, port
    finally:
        stop_group(proc, 5)
        primary.stop()


def test_connect_finds_the_primary_through_sentinel(sentinel: tuple[RedisServer, int]) -> None:
    primary, port = sentinel
    target = Settings.from_env({"REDIS_URL": f"sentinel://127.0.0.1:{port}/2",
                                "OCR_REDIS_SENTINEL_MASTER": "ocr"}).redis_target
    client = connect(target, patient=False)
    eventually(lambda: _answers(client), 20, "the Sentinel to name its primary")
    client.set("ocr:test", "1")
    direct = connect(RedisTarget(primary.url(2)))
    assert direct.get("ocr:test") == b"1"


def _stores_client() -> redis.Redis:
    """The stores' client of a Sentinel target: one retry, no backoff."""
    target = Settings.from_env({"REDIS_URL": "sentinel://127.0.0.1:1/2",
                                "OCR_REDIS_SENTINEL_MASTER": "ocr"}).redis_target
    return new_client(target, patient=False)


def _broker_client() -> redis.Redis:
    """A client on the pool the broker's Sentinel channel makes: one retry, no backoff."""
    options = SimpleNamespace(ocr_sentinels=[("127.0.0.1", 1)], master_name="ocr",
                              min_other_sentinels=0, sentinel_kwargs=None)
    pool = SentinelChannel._make_pool(options, {  # type: ignore[arg-type]
        "host": "127.0.0.1", "port": 1, "db": 2, "connection_class": redis.Connection,
        "max_connections": 4, "retry": Retry(NoBackoff(), 1)})
    return redis.Redis(connection_pool=pool)


def _backend_client() -> redis.Redis:
    """The client of the result backend a Sentinel target's Celery app builds."""
    from celery import Celery
    app = Celery("backend-test", set_as_current=False)
    app.conf.update(celery_config(Settings.from_env({
        "REDIS_URL": "sentinel://127.0.0.1:1/2", "OCR_REDIS_SENTINEL_MASTER": "ocr"})))
    backend = app.backend
    assert type(backend).__name__ == "PrimarySentinelBackend"
    return backend.client


class Primaries:
    """An old and a new primary, and the one a stand-in for the Sentinels names."""

    def __init__(self, old: RedisServer, new: RedisServer) -> None:
        self.old, self.new = old, new
        self.named = ("127.0.0.1", old.port)

    def replace(self) -> None:
        """The Sentinels name the new primary from now on."""
        self.named = ("127.0.0.1", self.new.port)


@pytest.fixture
def primaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Primaries]:
    old, new = RedisServer(tmp_path / "old"), RedisServer(tmp_path / "new")
    for server in (old, new):
        server.workdir.mkdir()
        server.start()
    made = Primaries(old, new)
    monkeypatch.setattr(Sentinel, "discover_master", lambda self, name: made.named)
    try:
        yield made
    finally:
        old.stop()
        new.stop()


@pytest.mark.parametrize("make_client", [_stores_client, _broker_client, _backend_client],
                         ids=["stores", "broker", "results"])
def test_a_retried_command_goes_to_the_primary_the_sentinels_name_now(
        primaries: Primaries, make_client: Callable[[], redis.Redis]) -> None:
    """A write that meets its primary turned replica is sent again to the new primary.

    What a failover leaves a worker: a pooled connection to the old primary, which
    comes back as a replica and answers READONLY. The retry reconnects that same
    connection: it asks the Sentinels again (here a stand-in naming the new primary),
    never its last address, where every try would meet READONLY until its retries
    ran out (a job held past its time limit).
    """
    client = make_client()
    client.set("ocr:test", "old")
    redis.Redis(port=primaries.old.port).replicaof("127.0.0.1", primaries.new.port)
    primaries.replace()
    pipe = client.pipeline(transaction=False)
    pipe.set("ocr:test", "new")
    pipe.incr("ocr:count")
    assert pipe.execute() == [True, 1]
    assert redis.Redis(port=primaries.new.port, db=2).get("ocr:test") == b"new"
    client.close()


def test_a_write_no_replica_holds_is_not_kept(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    try:
        target = RedisTarget(server.url(0), min_replicas=1, replica_timeout=0.2)
        client = connect(target)
        replies = kept(client.pipeline(transaction=False).set("ocr:test", "1"), target).execute()
        with pytest.raises(TransientError) as refused:
            check_kept(replies, target, "the job")
        assert refused.value.retryable and refused.value.code == "transient"
        alone = RedisTarget(server.url(0))
        pipe = client.pipeline(transaction=False).set("ocr:test", "2")
        check_kept(kept(pipe, alone).execute(), alone, "the job")
    finally:
        server.stop()


def test_a_write_the_primary_lacks_is_lost_not_kept(tmp_path: Path) -> None:
    """A key its writer just wrote, absent from the server that answers: a failover lost it.

    (A command retried through a failover reaches the new primary, which never got the
    write.) Its writer is told `transient` and sends it again; a key that is there and
    on no replica is the primary's alone: not kept, not lost.
    """
    server = RedisServer(tmp_path)
    server.start()
    try:
        target = RedisTarget(server.url(0), min_replicas=1, replica_timeout=0.2)
        client = connect(target)
        with pytest.raises(TransientError) as lost:
            hold_kept(client, "ocr:job:lost:ended", target, 0.2)
        assert lost.value.retryable
        client.set("ocr:job:there:ended", "host:1", px=60_000)
        assert hold_kept(client, "ocr:job:there:ended", target, 0.2) is False
    finally:
        server.stop()


def test_a_write_to_a_replaced_primary_is_lost_not_kept(primaries: Primaries) -> None:
    """Replicas short, and the Sentinels name another primary by then: the writes are lost.

    (A live primary the Sentinels replaced takes writes until they tell it to follow the
    new one, which throws them away.) Still named, it is the primary's alone: not kept.
    """
    target = Settings.from_env({
        "REDIS_URL": "sentinel://127.0.0.1:1/2", "OCR_REDIS_SENTINEL_MASTER": "ocr",
        "OCR_REDIS_MIN_REPLICAS": "1", "OCR_REDIS_REPLICA_TIMEOUT": "0.2"}).redis_target
    client = new_client(target)
    client.set("ocr:job:a:ended", "host:1", px=60_000)
    assert hold_kept(client, "ocr:job:a:ended", target, 0.2) is False
    primaries.replace()  # replaced meanwhile, not yet told
    with pytest.raises(TransientError):
        hold_kept(client, "ocr:job:a:ended", target, 0.2)
    client.close()


def _answers(client: object) -> bool:
    try:
        return bool(client.ping())  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - the Sentinel may not have looked at its primary yet
        return False


def worker_app(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A worker's Celery app behind the stand-in Sentinels, waiting for one replica.

    No server is short of replicas yet (`Publisher._replicas_missed` emptied),
    and no publish waits to be sent again (`_pending`).
    """
    from celery import Celery

    from tasks.broker.pending_publishes import PendingPublishes
    from tasks.broker.publishing import Publisher
    monkeypatch.setattr(Publisher, "_replicas_missed", {})
    monkeypatch.setattr(Publisher, "_pending", PendingPublishes())
    settings = Settings.from_env({
        "REDIS_URL": "sentinel://127.0.0.1:1/2", "OCR_REDIS_SENTINEL_MASTER": "ocr",
        "OCR_REDIS_MIN_REPLICAS": "1", "OCR_REDIS_REPLICA_TIMEOUT": "0.2"})
    app = Celery(name, set_as_current=False)
    config = celery_config(settings)
    app.conf.update(config, broker_transport_options={
        **config["broker_transport_options"], "ocr_refuse_pending": False})
    return app


def test_a_workers_publish_to_a_replaced_primary_is_sent_again_to_the_new_one(
        primaries: Primaries, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas short and the Sentinels name another primary: the message goes there too.

    A worker's publish short of replicas goes on; to a live primary the Sentinels have
    replaced it would be thrown away with that server's writes (a retry, a callback, a
    page task lost). Its channel fails it as a lost connection instead, and Celery's
    publish retry sends it again on a new connection, which asks the Sentinels.
    """
    app = worker_app("replaced-test", monkeypatch)
    old, new = (redis.Redis(port=p.port, db=2) for p in (primaries.old, primaries.new))
    with app.producer_or_acquire() as producer:
        producer.channel.client.ping()  # connected to the primary named first
        primaries.replace()  # replaced meanwhile, not yet told
        app.send_task("ocr.test", queue="ocr-test", producer=producer)
    assert new.llen("ocr-test") == 1  # sent again there
    assert old.llen("ocr-test") == 1  # (what the replaced one took, and will throw away)
    app.close()


def test_a_window_without_waits_on_the_new_primary_leaves_the_replaced_one_found_out(
        primaries: Primaries, monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas just missing on the new primary: publishes there skip their WAIT.

    Not a publish still on the replaced primary: it waits, comes up short, and is sent
    again to the new one.
    """
    import time

    from tasks.broker.publishing import Publisher
    app = worker_app("window-test", monkeypatch)
    old, new = (redis.Redis(port=p.port, db=2) for p in (primaries.old, primaries.new))
    with app.producer_or_acquire() as producer:
        producer.channel.client.ping()  # connected to the primary named first
        primaries.replace()  # replaced meanwhile, not yet told
        # another connection of the process found the new primary short of replicas
        Publisher._replicas_missed[("127.0.0.1", primaries.new.port, None)] = \
            time.monotonic()
        app.send_task("ocr.test", queue="ocr-window", producer=producer)
        app.send_task("ocr.test", queue="ocr-window", producer=producer)  # now on the new
    assert new.llen("ocr-window") == 2  # the first sent again there, the second at once
    app.close()


@pytest.mark.parametrize("laned", [False, True], ids=["list", "lane"])
def test_a_publish_on_a_connection_to_the_replaced_primary_is_judged_by_that_connection(
        primaries: Primaries, monkeypatch: pytest.MonkeyPatch, laned: bool) -> None:
    """The pool comes to name the new primary while a publish's connection is to the old.

    (Another thread of the process asks the Sentinels as the publish goes out.) The new
    primary is short of replicas just now, so publishes there skip their WAIT. The
    publish is judged by where its connection went: it waits there, comes up short,
    and is sent again to the new primary. Judged by the pool's name instead, it would
    skip its WAIT and stay on the old one, to be thrown away.
    """
    import time

    from tasks.broker.publishing import Publisher
    from tasks.records.clients import CLIENT_HEADER
    from tasks.state.connection import PrimaryConnection
    app = worker_app("held-test", monkeypatch)
    new = redis.Redis(port=primaries.new.port, db=2)
    Publisher._replicas_missed[("127.0.0.1", primaries.new.port, None)] = \
        time.monotonic()
    send = PrimaryConnection.send_packed_command
    asked: list[bool] = []

    def other_thread_asks(self: PrimaryConnection, command: Any, *args: Any,
                          **kwargs: Any) -> None:
        packed = command if isinstance(command, bytes) else b"".join(command)
        if not asked and b"ocr.test" in packed:  # as the message goes out
            asked.append(True)  # the pool names the new primary from now on
            self.connection_pool.get_master_address()
        send(self, command, *args, **kwargs)

    with app.producer_or_acquire() as producer:
        producer.channel.commands.ping()  # a connection to the primary named first
        primaries.replace()  # replaced meanwhile, not yet told
        monkeypatch.setattr(PrimaryConnection, "send_packed_command", other_thread_asks)
        app.send_task("ocr.test", queue="ocr-held", producer=producer,
                      headers={CLIENT_HEADER: "svc-a"} if laned else {})
    assert asked
    assert _queued(new, "ocr-held") == 1  # sent again there
    app.close()


def _queued(client: redis.Redis, queue: str) -> int:
    """Messages waiting in `queue`: its list and client svc-a's lane of it."""
    from tasks.broker.layout import list_lane_key
    return int(client.llen(queue)) + int(client.llen(list_lane_key(queue, "svc-a")))


class _SentinelView:
    """One Sentinel's answer to SENTINEL MASTERS: the primary it names for `ocr`."""

    def __init__(self, port: int | None, odown: bool = False) -> None:
        self.port, self.odown = port, odown

    def masters(self) -> dict[str, Any] | None:
        if self.port is None:
            return None  # this Sentinel does not answer
        return {"ocr": {"ip": "127.0.0.1", "port": self.port, "is_master": True,
                        "is_sdown": False, "is_odown": self.odown}}


@pytest.mark.parametrize(("views", "replaced"), [
    ((6001, 6001), False),
    ((6001, 6002), True),
    ((None, 6001), False),
    ((6001, None), False),
    ((6001, (6001, True)), True),
], ids=["all-name-it", "one-heard-of-the-switch", "one-silent", "last-silent", "held-down"])
def test_a_primary_one_sentinel_has_replaced_is_replaced(
        monkeypatch: pytest.MonkeyPatch, views: tuple[Any, ...], replaced: bool) -> None:
    """The pool asks the first Sentinel that answers; in a switch it may not have heard.

    A Sentinel that names another primary, or holds this one objectively down, is
    enough: a worker's publish short of replicas there is sent again, not left on a
    primary about to be demoted. A silent Sentinel tells nothing.
    """
    from redis.sentinel import Sentinel

    from tasks.state import replicas
    from tasks.state.replicas import replaced_at
    monkeypatch.setattr(Sentinel, "discover_master", lambda self, name: ("127.0.0.1", 6001))
    monkeypatch.setattr(replicas, "_masters_of", lambda view: view.masters())
    sentinel = Sentinel([("127.0.0.1", 1)])
    sentinel.sentinels = [_SentinelView(*v) if isinstance(v, tuple) else _SentinelView(v)
                          for v in views]
    client = sentinel.master_for("ocr")
    assert replaced_at(client, ("127.0.0.1", 6001, None)) is replaced


def test_a_silent_sentinel_is_asked_once_without_retries() -> None:
    """Looking past the first Sentinel: one that drops the connection costs one try.

    (A Sentinel client retries a refused connection with a backoff of seconds; the
    Sentinel of a dead host would cost each look that much.)
    """
    import socket
    import threading

    from tasks.state.replicas import _masters_of
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted: list[int] = []

    def drop() -> None:
        while True:
            try:
                peer, _ = listener.accept()
            except OSError:
                return
            accepted.append(1)
            peer.close()

    threading.Thread(target=drop, daemon=True).start()
    sentinel = redis.Redis(port=listener.getsockname()[1], socket_timeout=2)
    try:
        assert _masters_of(sentinel) is None
    finally:
        listener.close()
    assert accepted == [1]


def test_publishes_no_replica_confirmed_go_again_once_their_primary_is_replaced(
        primaries: Primaries, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker's publishes to a primary short of replicas, which the Sentinels still name.

    They go on (the first waits and comes up short, the next skips its WAIT in that
    server's window), on that primary alone. Then the Sentinels replace it, and it is
    told to follow the new one, throwing its writes away. The worker's next publish
    meets it read-only, goes to the new primary, and the two before go there again.
    """
    app = worker_app("unkept-test", monkeypatch)
    old, new = (redis.Redis(port=p.port, db=2) for p in (primaries.old, primaries.new))
    with app.producer_or_acquire() as producer:
        app.send_task("ocr.test", queue="ocr-unkept", producer=producer)  # short: a window
        app.send_task("ocr.test", queue="ocr-unkept", producer=producer)  # in the window
        assert (_queued(old, "ocr-unkept"), _queued(new, "ocr-unkept")) == (2, 0)
        primaries.replace()
        old.replicaof("127.0.0.1", primaries.new.port)
        app.send_task("ocr.test", queue="ocr-unkept", producer=producer)
    assert _queued(new, "ocr-unkept") == 3
    app.close()


def test_a_split_on_a_replaced_primary_is_found_before_its_pages_go(
        primaries: Primaries) -> None:
    """A document's split (its meta) held until a replica has it, as its pages wait to go.

    Mid-failover the state store's connection may still be to a primary the Sentinels
    have replaced while the broker's is to the new one: pages sent there would find no
    meta. The hold finds it out (`transient`: the document is split again); on the
    primary still named, short of replicas, it is False and the pages go without one.
    """
    from tasks.errors import PrimaryReplaced
    from tasks.records.jobs import DocumentMeta, Job
    from tasks.records.request import JobRequest
    from tasks.records.results import DocumentResult
    from tasks.state.join import DocumentJoin
    target = Settings.from_env({
        "REDIS_URL": "sentinel://127.0.0.1:1/2", "OCR_REDIS_SENTINEL_MASTER": "ocr",
        "OCR_REDIS_MIN_REPLICAS": "1", "OCR_REDIS_REPLICA_TIMEOUT": "0.2"}).redis_target
    client = new_client(target)
    join = DocumentJoin(client, 600)
    meta = DocumentMeta(Job("doc-1", JobRequest("blob", filename="doc.pdf"), "fake", 0.0),
                        2, [1, 2], ["p1", "p2"], "ocr-fake",
                        DocumentResult(filename="doc.pdf", status=None))
    assert join.start(meta, [])
    assert join.keep("doc-1", target) is False  # still named: no replica, goes on
    primaries.replace()  # replaced meanwhile, not yet told
    with pytest.raises(PrimaryReplaced):
        join.keep("doc-1", target)
    client.close()


@pytest.mark.parametrize("pool", ["stores", "broker"])
def test_a_new_connection_opens_its_session_without_a_ping_first(tmp_path: Path,
                                                                 pool: str) -> None:
    """A connection's handshake shows it alive: no health-check PING goes before it.

    The stores' pools and the broker's check a connection's health (a PING) before a
    command once their interval passed since its last reply; a new connection had
    none. The broker's channel asks one PING of its own as it opens (kombu's check).
    """
    from kombu import Connection

    from tasks.broker.transport import TRANSPORT

    server = RedisServer(tmp_path)
    server.start()
    try:
        observer = redis.Redis(port=server.port)
        observer.config_resetstat()
        if pool == "stores":
            assert new_client(RedisTarget(server.url(2)), patient=False).get("x") is None
        else:
            with Connection(server.url(2), transport=TRANSPORT) as conn:
                assert conn.default_channel.client.get("x") is None
        calls = {name: int(stat["calls"])
                 for name, stat in observer.info("commandstats").items()}
        # the session opened (database 2 selected), the command went
        assert calls.get("cmdstat_select", 0) >= 1 and calls.get("cmdstat_get") == 1, calls
        assert calls.get("cmdstat_ping", 0) == (0 if pool == "stores" else 1), calls
    finally:
        server.stop()
