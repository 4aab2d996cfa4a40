"""Broadcasts: fanout exchanges over Redis PUB/SUB, and the unheard ones left quiet.

Runs in every process that uses the Redis broker: a fanout publish (`_put_fanout`:
remote control's broadcasts, Celery's task and worker events) is one PUBLISH to the
exchange's topic, `/<db>.<exchange>/<routing key>` as stock kombu clients name it; a
process that consumes a fanout queue (the worker parent's mailbox, Flower's and
`celery events`' event queues) subscribes to its topics with PSUBSCRIBE on the
channel's PUB/SUB connection and hands each broadcast to the queue's consumer.

Unheard exchanges (the channel's `ocr_unheard_exchanges`; tasks/queue/celery_config.py
names Celery's event exchange, and nothing else): PUBLISH answers how many subscribers
took the message, pattern subscribers included. Where a topic of such an exchange
reached none, this process sends nothing more to that topic for `ocr_unheard_quiet`
seconds, then publishes again, which asks again. Kept per topic, not per exchange: a
subscriber to some routing keys alone (a stock worker's gossip hears `worker.*`) still
gets every message of those. A subscriber that appears meanwhile (a Flower that starts)
gets each topic's messages from that topic's next publish after its quiet time. The
routing keys of `ocr_unheard_always` (celery_config names a task's endings and a
worker's coming and going) are published whatever was heard, so a subscriber that
came within a quiet time still sees each task end. Any other fanout exchange (remote
control's `celery.pidbox`) is always published.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.broker.refusals import Refused, check_envelope
from tasks.records.jobs import Broadcast


class Broadcasts:
    """A channel's fanout side: topics, PUBLISH, PSUBSCRIBE, delivery.

    A part of the channel (tasks/broker/channel.py), which holds the pools, the fanout
    queues' bindings, the consumers and the options named here.
    """

    # (server, topic) -> until when (time.monotonic) this process does not publish to
    # it: shared by the process's channels (Celery sends events on several).
    _quiet_until: dict[tuple[str, str], float] = {}

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._server_uri: str | None = None

    def topic(self, exchange: str, routing_key: str) -> str:
        if routing_key and self.channel.fanout_patterns:
            return f"{self.channel.keyprefix_fanout}{exchange}/{routing_key}"
        return f"{self.channel.keyprefix_fanout}{exchange}"

    def put(self, exchange: str, message: Any, routing_key: str) -> None:
        """Kombu's fanout publish: one PUBLISH, left out where the topic is quiet."""
        topic = self.topic(exchange, routing_key)
        if not self._may_quiet(exchange, routing_key):
            self.channel.commands.publish(topic, dumps(message))
            return
        key = (self._server(), topic)
        now = time.monotonic()
        if now < self._quiet_until.get(key, float("-inf")):
            return  # nobody heard this topic a moment ago
        if self.channel.commands.publish(topic, dumps(message)):
            self._quiet_until.pop(key, None)
        else:
            self._quiet_until[key] = now + float(self.channel.ocr_unheard_quiet)

    def broadcast(self, exchange: str, routing_key: str, body: Any,
                  headers: dict[str, Any] | None = None, delivery_mode: int = 1) -> None:
        """Publish `body` (JSON) to a fanout exchange in the envelope kombu's producer makes.

        The same message a kombu `Producer.publish` gives this channel (a base64 body, the
        delivery info, a new delivery tag), made without its declare and preparing steps,
        so that any kombu consumer (Flower, `celery events`) reads it as its own.
        """
        self.put(exchange, self._envelope(exchange, routing_key, body, headers,
                                          delivery_mode), routing_key)

    def broadcast_later(self, exchange: str, routing_key: str, body: Any,
                        headers: dict[str, Any] | None = None,
                        delivery_mode: int = 1) -> Broadcast | None:
        """`broadcast`'s PUBLISH, made and not sent: for a caller to send to this server.

        A writer that reaches the same server sends it in a round trip of its own (a
        job's end claim: tasks/state/job_control.py). None where the topic may be left
        quiet (an unheard exchange's): `broadcast` sends that one, asking who heard it.
        """
        if self._may_quiet(exchange, routing_key):
            return None
        envelope = self._envelope(exchange, routing_key, body, headers, delivery_mode)
        return Broadcast(self.topic(exchange, routing_key), dumps(envelope))

    def _envelope(self, exchange: str, routing_key: str, body: Any,
                  headers: dict[str, Any] | None, delivery_mode: int) -> dict[str, Any]:
        encoded, encoding = self.channel.encode_body(dumps(body), self.channel.body_encoding)
        return {
            "body": encoded, "content-encoding": "utf-8", "content-type": "application/json",
            "headers": headers or {},
            "properties": {"delivery_mode": delivery_mode,
                           "delivery_info": {"exchange": exchange, "routing_key": routing_key},
                           "priority": self.channel.default_priority, "body_encoding": encoding,
                           "delivery_tag": str(uuid.uuid4())}}

    def unheard(self, exchange: str, routing_key: str) -> bool:
        """Whether a broadcast to this topic would be left quiet now (not published).

        A sender asks first, so that it does not even make a message nobody hears
        (tasks/queue/ocr_celery.py: Celery's `task-sent` events).
        """
        if not self._may_quiet(exchange, routing_key):
            return False
        key = (self._server(), self.topic(exchange, routing_key))
        return time.monotonic() < self._quiet_until.get(key, float("-inf"))

    def _may_quiet(self, exchange: str, routing_key: str) -> bool:
        options = self.channel
        return (exchange in options.ocr_unheard_exchanges and options.ocr_unheard_quiet > 0
                and routing_key not in options.ocr_unheard_always)

    def _server(self) -> str:
        """The broker this channel's connection names (its URL without the password)."""
        if self._server_uri is None:
            self._server_uri = str(self.channel.connection.client.as_uri())
        return self._server_uri

    def subscribe(self) -> None:
        """Subscribe this channel's PUB/SUB client to its fanout queues' topics."""
        topics = [self.topic(*self.channel._fanout_queues[queue])
                  for queue in self.channel.active_fanout_queues]
        if topics:
            self.channel.subclient.psubscribe(*topics)
            self.channel._listening = self.channel.subclient.connection

    def receive(self) -> bool:
        """Deliver the broadcasts that arrived (one read, then what is buffered)."""
        client = self.channel.subclient
        delivered = False
        try:
            while True:
                reply = client.parse_response(block=False)
                if reply is None:
                    break
                delivered = self._broadcast(reply) or delivered
                if client.connection is None or not client.connection.can_read(timeout=0):
                    break
        except self.channel.connection_errors:
            self.channel._listening = None
            raise
        return delivered

    def _broadcast(self, reply: Any) -> bool:
        if not isinstance(reply, (list, tuple)) or not reply:
            return False
        kind = bytes_to_str(reply[0])
        if kind not in ("message", "pmessage"):
            return False
        topic, data = bytes_to_str(reply[-2]), reply[-1]
        if topic.startswith("/"):
            topic = topic.partition(".")[2]
        exchange = topic.split("/", 1)[0]
        queue = self.channel._fanout_to_queue.get(exchange)
        if queue is None or not data:
            return False
        try:
            message = loads(bytes_to_str(data))
        except (TypeError, ValueError):
            message = data
        # Checked as task messages are: a refused one is dead-lettered (a broadcast is
        # no job: no FAILURE is stored for it).
        try:
            check_envelope(message, tuple(self.channel.ocr_accept_content))
        except Refused as refused:
            raw = message if isinstance(message, bytes) else json.dumps(message).encode()
            self.channel.fetcher.refuse(raw, f"fanout:{exchange}", Refused(refused.error, None))
            return False
        self.channel.connection.on_message_ready(self.channel, message, queue)
        return True
