"""Broadcasts: fanout exchanges over Redis PUB/SUB.

Runs in every process that uses the Redis broker: a fanout publish (`_put_fanout`:
remote control's broadcasts, Celery's task and worker events) is one PUBLISH to the
exchange's topic, `/<db>.<exchange>/<routing key>` as stock kombu clients name it; a
process that consumes a fanout queue (the worker parent's mailbox, Flower's and
`celery events`' event queues) subscribes to its topics with PSUBSCRIBE on the
channel's PUB/SUB connection and hands each broadcast to the queue's consumer.

A channel given a fanout gate (its hooks' `fanout_gate`, tasks/broker/channel.py: the
queue layer's, tasks/queue/quiet_events.py) asks it before each fanout publish, and tells it
how many subscribers the PUBLISH reached. Without one, every fanout publish is sent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from tasks.broker.refusals import Refused, check_envelope


@dataclass(frozen=True)
class FanoutTopic:
    """Where a fanout publish goes: a server (its URL without the password), a topic.

    With the exchange and routing key the topic is named from.
    """

    server: str
    name: str
    exchange: str
    routing_key: str


class FanoutGate(Protocol):
    """What a channel asks before a fanout publish, and tells after it."""

    def held(self, topic: FanoutTopic) -> bool:
        """Whether the publish to `topic` is left out."""

    def answered(self, topic: FanoutTopic, subscribers: int) -> None:
        """The PUBLISH to `topic` reached `subscribers` (PUBLISH's answer)."""


class Broadcasts:
    """A channel's fanout side: topics, PUBLISH, PSUBSCRIBE, delivery.

    A part of the channel (tasks/broker/channel.py), which holds the pools, the fanout
    queues' bindings, the consumers and the fanout gate.
    """

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self._server_uri: str | None = None

    def topic_name(self, exchange: str, routing_key: str) -> str:
        if routing_key and self.channel.fanout_patterns:
            return f"{self.channel.keyprefix_fanout}{exchange}/{routing_key}"
        return f"{self.channel.keyprefix_fanout}{exchange}"

    def topic(self, exchange: str, routing_key: str) -> FanoutTopic:
        return FanoutTopic(self._server(), self.topic_name(exchange, routing_key), exchange,
                           routing_key)

    def put(self, exchange: str, message: Any, routing_key: str) -> None:
        """Kombu's fanout publish: one PUBLISH, unless the channel's gate holds it."""
        gate: FanoutGate | None = self.channel.ocr_fanout_gate
        if gate is None:
            self.channel.commands.publish(self.topic_name(exchange, routing_key),
                                          dumps(message))
            return
        topic = self.topic(exchange, routing_key)
        if not gate.held(topic):
            gate.answered(topic, self.channel.commands.publish(topic.name, dumps(message)))

    def _server(self) -> str:
        """The broker this channel's connection names (its URL without the password)."""
        if self._server_uri is None:
            self._server_uri = str(self.channel.connection.client.as_uri())
        return self._server_uri

    def subscribe(self) -> None:
        """Subscribe this channel's PUB/SUB client to its fanout queues' topics."""
        topics = [self.topic_name(*self.channel._fanout_queues[queue])
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
