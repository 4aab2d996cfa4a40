"""Flower's task events of a job, sent as the worker node on one connection per thread.

Runs in worker processes (pool children, the worker parent, the control worker's
threads). A process keeps one event dispatcher, on a broker connection of its own, per
thread and node name, for all its jobs: an event is one PUBLISH, not a new connection.
On the Redis broker the event goes out through the transport's `broadcast`, in the
message the dispatcher's producer would make, without the producer's steps (and left
out where nobody hears it: tasks/queue/quiet_events.py); or, made
by `event_later`, in the round trip of a job's end claim, where the state store is on
the broker's server (tasks/queue/job_services.py).
An event is for watchers only: one the broker cannot take (its connection lost with a
RabbitMQ node) is logged and dropped, the dispatcher closed (the next event opens a
new one), never allowed to cut a job's ending short.

A job's ending event (`task-succeeded`, `task-failed`) is its one exit's, sent once in
whichever process ends it; `DocumentRequest` keeps Celery's own out (the worker
parent's, on while Flower turns events on), which counted each job twice there.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from typing import Any

from celery.events import Event
from celery.utils.time import utcoffset
from celery.worker.request import Request
from kombu.utils.json import dumps

from tasks.records.jobs import Broadcast
from tasks.state.boundary import PUBLISH_ERRORS

log = logging.getLogger(__name__)
_Key = tuple[int, int, int, str | None]  # process, thread, app, node name: `_key`
_dispatchers: dict[_Key, Any] = {}
_errors: dict[tuple[int, int], tuple[type[BaseException], ...]] = {}


# The events of a job's ending: sent by its one exit (tasks/queue/job_services.py).
ENDING_EVENTS = frozenset({"task-succeeded", "task-failed"})


class DocumentRequest(Request):
    """`ocr.document` in the worker parent: Celery's request, without its ending events.

    The job's one exit sends them, also for a PDF whose last page ends it in another
    task; Celery's `task-succeeded` and `task-failed` for the same job would make
    Flower count it twice (its dashboard's Succeeded and Failed).
    """

    def send_event(self, type: str, **fields: Any) -> None:
        if type not in ENDING_EVENTS:
            super().send_event(type, **fields)


def send_event(app: Any, hostname: str | None, event: str, job_id: str,
               **fields: Any) -> None:
    """Send `event` of job `job_id` as `hostname`, on this thread's dispatcher.

    A kept dispatcher whose connection the broker dropped meanwhile (an idle AMQP
    connection, a Redis restart) is replaced and the event sent once more on a new one.
    """
    key = _key(app, hostname)
    errors = _broker_errors(app)
    for _ in range(2):
        kept = key in _dispatchers
        try:
            dispatcher = _dispatcher(app, key)
            if app.ocr_settings.broker_is_amqp:
                dispatcher.send(event, uuid=job_id, **fields)
            else:  # the transport's own broadcast: the same message, fewer steps
                _broadcast(dispatcher, event, uuid=job_id, **fields)
            return
        except errors as exc:
            _drop(key, errors)
            if not kept:
                log.warning("event %s of job %s not sent (%s)", event, job_id,
                            type(exc).__name__)
                return


def event_later(app: Any, hostname: str | None, event: str, job_id: str,
                **fields: Any) -> Broadcast | None:
    """`send_event`'s message as the Redis broker would PUBLISH it, made and not sent.

    For a caller that sends it to the broker's server in a round trip of its own (a job's
    end claim). None where `send_event` must send it: a RabbitMQ broker, events off, a
    topic that may be left quiet, or a dispatcher the broker would not give.
    """
    if app.ocr_settings.broker_is_amqp:
        return None
    key = _key(app, hostname)
    errors = _broker_errors(app)
    try:
        dispatcher = _dispatcher(app, key)
        if not dispatcher.enabled:
            return None
        channel = dispatcher.producer.channel
        topic = channel.fanout_topic(dispatcher.exchange.name, _routing_key(event))
        gate = channel.ocr_fanout_gate
        if gate is not None and gate.may_quiet(topic):
            return None  # `send_event` sends it, asking who hears it
        return Broadcast(topic.name, dumps(_envelope(channel, dispatcher, event,
                                                     uuid=job_id, **fields)))
    except errors:
        _drop(key, errors)
        return None


def _key(app: Any, hostname: str | None) -> _Key:
    """A kept dispatcher's key: this process and thread, `app`, the node it speaks for."""
    return (os.getpid(), threading.get_ident(), id(app), hostname)


def _dispatcher(app: Any, key: _Key) -> Any:
    """The dispatcher kept for `key`; made, on a broker connection of its own, if none is."""
    dispatcher = _dispatchers.get(key)
    if dispatcher is None:
        dispatcher = _dispatchers[key] = app.events.Dispatcher(
            app.connection_for_write(), hostname=key[3], buffer_while_offline=False)
    return dispatcher


def _broadcast(dispatcher: Any, event: str, **fields: Any) -> None:
    """`dispatcher.send(event, **fields)` on the Redis transport, through its `broadcast`."""
    if not dispatcher.enabled:
        return
    channel = dispatcher.producer.channel
    channel.broadcast(dispatcher.exchange.name, _routing_key(event),
                      _envelope(channel, dispatcher, event, **fields))


def _routing_key(event: str) -> str:
    """An event's routing key, as Celery's dispatcher names it (`task-sent`: task.sent)."""
    return event.replace("-", ".")


def _envelope(channel: Any, dispatcher: Any, event: str, **fields: Any) -> dict[str, Any]:
    """The message a kombu `Producer.publish` of `event` gives `channel`.

    Its body the event Celery's dispatcher makes (its clock forwarded), then a base64
    body, the delivery info and a new delivery tag, made without the producer's declare
    and preparing steps, so that any kombu consumer (Flower, `celery events`) reads it
    as its own.
    """
    body = Event(event, hostname=dispatcher.hostname, utcoffset=utcoffset(),
                 pid=dispatcher.pid, clock=dispatcher.clock.forward(), **fields)
    encoded, encoding = channel.encode_body(dumps(body), channel.body_encoding)
    return {
        "body": encoded, "content-encoding": "utf-8", "content-type": "application/json",
        "headers": dispatcher.headers or {},
        "properties": {"delivery_mode": dispatcher.delivery_mode,
                       "delivery_info": {"exchange": dispatcher.exchange.name,
                                         "routing_key": _routing_key(event)},
                       "priority": channel.default_priority, "body_encoding": encoding,
                       "delivery_tag": str(uuid.uuid4())}}


def _broker_errors(app: Any) -> tuple[type[BaseException], ...]:
    """What a publish to `app`'s broker may raise, found once per process and app.

    Read from the errors kombu's connection names for the broker's transport: its
    Connection object opens no connection, but building one costs about half an
    event's publish in CPU, so it is built once.
    """
    key = (os.getpid(), id(app))
    errors = _errors.get(key)
    if errors is None:
        broker = app.connection_for_write()
        try:
            # AttributeError: a kept channel kombu closed under it (a broker restart)
            errors = _errors[key] = (*PUBLISH_ERRORS, *broker.connection_errors,
                                     *broker.channel_errors, AttributeError)
        finally:
            broker.release()
    return errors


def _drop(key: _Key, errors: tuple[type[BaseException], ...]) -> None:
    dropped = _dispatchers.pop(key, None)
    if dropped is not None:
        try:
            dropped.close()
            dropped.connection.release()
        except errors:
            pass
