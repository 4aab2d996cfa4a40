"""What a queue's declare, a binding and a broadcast cost Redis, and what they still promise.

On a redis-server of the test's own, counted by `INFO commandstats` (a script's own
commands included) and read in order by MONITOR: a declare of an empty queue is one
EXISTS, of a busy one its exact count; a binding is two SADDs, its permanent entry
first; an event nobody hears goes quiet for a while and reaches a subscriber that came
once that while is over; a remote control broadcast always goes out
(tasks/broker/channel.py, publishing.py, broadcasts.py). A broker script its
server loses again as it is loaded is loaded again, up to `lua.LOADS` times
(tasks/state/lua.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Producer, Queue

from tasks.broker import lanes, layout
from tasks.broker.channel import Hooks, hooks_named, register_hooks
from tasks.broker.transport import TRANSPORT
from tasks.queue.quiet_events import UnheardEvents
from tasks.records.clients import CLIENT_HEADER
from tasks.state import lua
from tests.losing_redis import losing_redis


def calls(r: redis.Redis) -> dict[str, int]:
    """Commands by name since the last CONFIG RESETSTAT (AUTH, PING, ... left out)."""
    skip = {"config|resetstat", "info", "ping", "hello", "client|setinfo", "select",
            "client|setname", "script|load"}
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in r.info("commandstats").items()
            if name.removeprefix("cmdstat_") not in skip}


@pytest.fixture
def r(lone_redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(lone_redis_url)
    yield client
    client.close()


def counted(r: redis.Redis, step: Callable[[], Any]) -> dict[str, int]:
    r.config_resetstat()
    step()
    return calls(r)


def publish(conn: Connection, queue: str, n: int, client: str = "",
            priority: int = 0) -> None:
    exchange = Exchange(queue, type="direct")
    producer = Producer(conn.default_channel)
    for i in range(n):
        producer.publish({"n": i}, exchange=exchange, routing_key=queue, priority=priority,
                         headers={CLIENT_HEADER: client} if client else {},
                         declare=[Queue(queue, exchange, routing_key=queue)],
                         serializer="json")


def test_a_declare_of_an_empty_queue_is_one_exists_and_a_busy_one_counts_exactly(
        lone_redis_url: str, r: redis.Redis) -> None:
    """queue_declare's message count, asked by every process's first publish to a queue."""
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        channel.queue_declare("ocr-warm")  # the channel's connection made
        for queue in ("ocr-empty", "celeryev.x"):  # laned, and not
            assert counted(r, lambda q=queue: channel.queue_declare(q).message_count == 0) \
                == {"exists": 1}
        # Messages in lanes (two clients, two priorities), in the list, in another queue.
        publish(conn, "ocr-busy", 3, client="alice")
        publish(conn, "ocr-busy", 2, client="bob", priority=6)
        publish(conn, "ocr-busy", 4)
        publish(conn, "ocr-busy", 1, priority=9)
        publish(conn, "ocr-other", 5, client="carol")
        assert channel.queue_declare("ocr-busy").message_count == 10
        assert channel.queue_declare("ocr-other").message_count == 5
        # Rings hold clients (of the other queues): counted, and found empty.
        assert channel.queue_declare("ocr-empty").message_count == 0
        publish(conn, "celeryev.x", 2)
        assert channel.queue_declare("celeryev.x").message_count == 2
        assert channel.queue_declare("ocr-busy", passive=True).message_count == 10


def test_a_binding_is_two_sadds_its_permanent_entry_first(lone_redis_url: str,
                                                          r: redis.Redis) -> None:
    """No MULTI: the permanent set lists a binding before its exchange's table does.

    A sweep (ours, binding_expiry.py, or a stock kombu 5.7 client's) keeps a table entry
    listed permanent, so at no moment can one find the table's entry without it.
    """
    exchange = Exchange("ocr-bind", type="direct")
    first, second = (Queue(f"ocr-bind-{n}", exchange, routing_key="ocr-bind")
                     for n in (1, 2))
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:
        channel = conn.default_channel
        channel.queue_declare("ocr-warm")
        exchange(channel).declare()  # the channel's own state: no command
        assert counted(r, lambda: first(channel).queue_bind()) == {"sadd": 2}
        with r.monitor() as monitor:
            second(channel).queue_bind()
            seen = [monitor.next_command()["command"] for _ in range(2)]
    assert [command.split(" ")[:2] for command in seen] == [
        ["SADD", f"{layout.BINDING_PERMANENT_PREFIX}ocr-bind"],
        ["SADD", f"{layout.BINDING_PREFIX}ocr-bind"]]
    for key in (layout.BINDING_PREFIX, layout.BINDING_PERMANENT_PREFIX):
        assert {m.decode().rsplit(layout.SEP, 1)[-1] for m in r.smembers(f"{key}ocr-bind")} \
            == {first.name, second.name}


QUIET = 0.6


def gated() -> dict[str, Any]:
    """Transport options with a fanout gate of its own (tasks/queue/quiet_events.py)."""
    return {"ocr_hooks": register_hooks(Hooks(
        fanout_gate=UnheardEvents(("celeryev",), QUIET, ("task.succeeded",))))}


def broadcast(conn: Connection, exchange: str, routing_key: str, body: Any) -> None:
    fanout = Exchange(exchange, type="fanout")
    Producer(conn.default_channel).publish(body, exchange=fanout, routing_key=routing_key,
                                           declare=[fanout], serializer="json")


def heard(pubsub: Any) -> list[str]:
    """The topics of the messages `pubsub` received so far."""
    got = []
    while (message := pubsub.get_message(timeout=0.2)) is not None:
        if message["type"] == "pmessage":
            got.append(message["channel"].decode())
    return got


def test_an_unheard_event_goes_quiet_then_reaches_a_subscriber_that_came(
        lone_redis_url: str, r: redis.Redis) -> None:
    """No one subscribed: one PUBLISH, then none for the quiet time; then heard each time."""
    with Connection(lone_redis_url, transport=TRANSPORT, transport_options=gated()) as conn:
        conn.default_channel.queue_declare("ocr-warm")
        assert counted(r, lambda: [broadcast(conn, "celeryev", "task.sent", {"n": n})
                                   for n in range(5)]) == {"publish": 1}
        channel = conn.default_channel
        assert channel.ocr_fanout_gate.held(channel.fanout_topic("celeryev", "task.sent"))
        assert not channel.ocr_fanout_gate.held(  # always sent
            channel.fanout_topic("celeryev", "task.succeeded"))
        flower = r.pubsub()
        flower.psubscribe("/1.celeryev/*")  # Flower's subscription
        assert heard(flower) == []
        broadcast(conn, "celeryev", "task.sent", {"n": 5})  # still quiet: not sent
        assert heard(flower) == []
        time.sleep(QUIET)
        assert counted(r, lambda: [broadcast(conn, "celeryev", "task.sent", {"n": n})
                                   for n in range(6, 9)]) == {"publish": 3}
        assert heard(flower) == ["/1.celeryev/task.sent"] * 3
        flower.close()


def test_a_task_sent_event_nobody_hears_is_not_even_made(lone_redis_url: str,
                                                         r: redis.Redis) -> None:
    """The sender asks the transport first (`QuietSentEvents`): no event is built."""
    from celery import Celery

    from tasks.queue.ocr_celery import QuietSentEvents

    app = Celery(broker=lone_redis_url, broker_transport_options=gated())
    app.conf.broker_transport = TRANSPORT
    dispatcher = app.events.Dispatcher(enabled=False)
    made: list[str] = []
    publish = dispatcher.publish
    dispatcher.publish = lambda kind, *a, **k: made.append(kind) or publish(kind, *a, **k)
    events = QuietSentEvents(dispatcher)
    with app.connection_for_write() as conn, app.producer_or_acquire() as producer:
        conn.default_channel.queue_declare("ocr-warm")
        assert counted(r, lambda: [events.publish("task-sent", {"uuid": str(n)}, producer)
                                   for n in range(4)]) == {"publish": 1}
        assert made == ["task-sent"]  # the first asked the broker; nobody heard it
        time.sleep(QUIET)
        events.publish("task-sent", {"uuid": "5"}, producer)
        assert made == ["task-sent"] * 2


def test_a_jobs_event_is_the_message_celerys_dispatcher_sends(lone_redis_url: str,
                                                              r: redis.Redis) -> None:
    """The transport's `broadcast` of a job's event: what Flower gets from Celery's path.

    So is the one made for a job's end claim to publish (`event_later`).
    """
    import base64
    import json

    from tasks.queue import job_events
    from tasks.queue.app import create_app
    from tasks.settings import Settings

    app = create_app(Settings.from_env({"REDIS_URL": lone_redis_url}))
    flower = r.pubsub()
    flower.psubscribe("/1.celeryev/*")
    heard(flower)
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="node@host")
        dispatcher.send("task-succeeded", uuid="job-1", result="SUCCESS", runtime=0.5)
        job_events._broadcast(dispatcher, "task-succeeded", uuid="job-1", result="SUCCESS",
                              runtime=0.5)
        dispatcher.close()
    later = job_events.event_later(app, "node@host", "task-succeeded", "job-1",
                                   result="SUCCESS", runtime=0.5)
    assert later is not None
    r.publish(later.topic, later.message)
    got = []
    while (message := flower.get_message(timeout=1)) is not None:
        if message["type"] == "pmessage":
            got.append((message["channel"], json.loads(message["data"])))
    flower.close()
    assert [topic for topic, _ in got] == [b"/1.celeryev/task.succeeded"] * 3
    (_, celerys), (_, ours), (_, claims) = got
    messages = (celerys, ours, claims)
    bodies = [json.loads(base64.b64decode(m.pop("body"))) for m in messages]
    for body in bodies:
        assert body.pop("clock") > 0 and body.pop("timestamp") > 0
    assert bodies[0] == bodies[1] == bodies[2] and bodies[0]["type"] == "task-succeeded"
    tags = [m["properties"].pop("delivery_tag") for m in messages]
    assert len(set(tags)) == 3
    assert ours == celerys == claims


def test_a_tasks_ending_is_published_while_its_topic_would_be_quiet(
        lone_redis_url: str, r: redis.Redis) -> None:
    """A subscriber that came within a quiet time still sees a task end (always sent)."""
    with Connection(lone_redis_url, transport=TRANSPORT, transport_options=gated()) as conn:
        conn.default_channel.queue_declare("ocr-warm")
        assert counted(r, lambda: [broadcast(conn, "celeryev", key, {"n": n})
                                   for n in range(3) for key in ("task.started",
                                                                 "task.succeeded")]) \
            == {"publish": 1 + 3}
        flower = r.pubsub()
        flower.psubscribe("/1.celeryev/*")
        heard(flower)
        broadcast(conn, "celeryev", "task.started", {"n": 3})  # quiet: not sent
        broadcast(conn, "celeryev", "task.succeeded", {"n": 3})
        assert heard(flower) == ["/1.celeryev/task.succeeded"]
        flower.close()


def test_quiet_is_per_routing_key_and_never_for_remote_control(lone_redis_url: str,
                                                              r: redis.Redis) -> None:
    """A subscriber of `worker.*` alone (gossip) hears every heartbeat; pidbox always goes."""
    with Connection(lone_redis_url, transport=TRANSPORT, transport_options=gated()) as conn:
        conn.default_channel.queue_declare("ocr-warm")
        gossip = r.pubsub()
        gossip.psubscribe("/1.celeryev/worker.*")
        heard(gossip)

        def sends() -> None:
            for n in range(3):
                broadcast(conn, "celeryev", "task.progress", {"n": n})
                broadcast(conn, "celeryev", "worker.heartbeat", {"n": n})
                broadcast(conn, "celery.pidbox", "", {"method": "enable_events"})

        # progress: one PUBLISH (unheard, then quiet); heartbeats and pidbox: three each
        assert counted(r, sends) == {"publish": 1 + 3 + 3}
        assert heard(gossip) == ["/1.celeryev/worker.heartbeat"] * 3
        gossip.close()
    with Connection(lone_redis_url, transport=TRANSPORT) as conn:  # no option: all go
        conn.default_channel.queue_declare("ocr-warm")
        assert counted(r, lambda: [broadcast(conn, "celeryev", "task.sent", {"n": n})
                                   for n in range(3)]) == {"publish": 3}


def test_celery_config_names_its_event_exchange_and_the_quiet_setting() -> None:
    from tasks.queue.celery_config import celery_config
    from tasks.settings import Settings, SettingsError

    env = {"REDIS_URL": "redis://127.0.0.1:6379/0", "OCR_EVENTS_QUIET_SECONDS": "2.5"}
    config = celery_config(Settings.from_env(env))
    options = config["broker_transport_options"]
    gate = hooks_named(options["ocr_hooks"]).fanout_gate
    assert gate is not None
    assert gate.exchanges == (config["event_exchange"],)
    assert gate.quiet == 2.5
    assert {"task.succeeded", "task.failed"} <= set(gate.always)
    with pytest.raises(SettingsError, match="OCR_EVENTS_QUIET_SECONDS"):
        Settings.from_env({**env, "OCR_EVENTS_QUIET_SECONDS": "-1"})
    assert "ocr_hooks" not in celery_config(Settings.from_env(
        {**env, "BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"})).get(
            "broker_transport_options", {})


def test_a_broker_script_lost_again_as_it_is_loaded_is_loaded_again(
        lone_redis_url: str) -> None:
    losing = losing_redis(lone_redis_url)
    lane = layout.list_lane_key(layout.queue_list("ocr", 3), "root")
    push = lanes.push_command("", layout.queue_list("ocr", 3), "root", "{}")
    losing.losses = lua.LOADS - 1
    lua.run(losing, push)
    assert losing.llen(lane) == 1
    losing.script_flush()
    losing.losses = lua.LOADS
    with pytest.raises(redis.exceptions.NoScriptError):
        lua.run(losing, push)
    assert losing.llen(lane) == 1


def test_the_broker_info_a_stats_reply_carries_is_json() -> None:
    """Remote control's `stats` sends the broker connection's info, transport options in.

    The queue layer's hooks (code) go by name, so the reply encodes and Flower and
    `celery inspect stats` hear every worker.
    """
    import json

    from tasks.queue.app import create_app
    from tasks.settings import Settings

    app = create_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    info = app.connection_for_read().info()
    name = info["transport_options"]["ocr_hooks"]
    assert json.loads(json.dumps(info))["transport_options"]["ocr_hooks"] == name
    hooks = hooks_named(name)
    assert None not in (hooks.fanout_gate, hooks.running_tasks, hooks.on_refused)
