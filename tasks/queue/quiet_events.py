"""Celery's events left quiet while nobody hears them: the Redis transport's fanout gate.

Runs in every process that sends Celery events on the Redis broker (clients, the API,
beat, workers). `UnheardEvents` is the transport's hook `fanout_gate`
(tasks/queue/celery_config.py, tasks/broker/channel.py's `Hooks`): the transport asks
it before each fanout publish and tells it what the PUBLISH answered
(tasks/broker/broadcasts.py).

PUBLISH answers how many subscribers took the message, pattern subscribers included.
Where a topic of Celery's event exchange reached none, this process sends nothing more
to that topic for `quiet` seconds (OCR_EVENTS_QUIET_SECONDS), then publishes again,
which asks again. Kept per topic, not per exchange: a subscriber to some routing keys
alone (a stock worker's gossip hears `worker.*`) still gets every message of those. A
subscriber that appears meanwhile (a Flower that starts) gets each topic's messages
from that topic's next publish after its quiet time. The routing keys of `always` are
published whatever was heard, so a subscriber that came within a quiet time still sees
each task end. Any other fanout exchange (remote control's `celery.pidbox`) is always
published.
"""

from __future__ import annotations

import time

from tasks.broker.broadcasts import FanoutTopic

# The event routing keys never left quiet: a task's endings (Celery's and a job's own)
# and a worker's coming and going, so that a Flower started within a quiet time shows
# them.
ALWAYS_SENT_EVENTS = ("task.succeeded", "task.failed", "task.revoked", "task.rejected",
                      "worker.online", "worker.offline")


class UnheardEvents:
    """The fanout gate: which topics of `exchanges` are quiet now, and until when."""

    def __init__(self, exchanges: tuple[str, ...], quiet: float,
                 always: tuple[str, ...] = ALWAYS_SENT_EVENTS) -> None:
        self.exchanges = tuple(exchanges)
        self.quiet = float(quiet)
        self.always = tuple(always)
        # topic -> until when (time.monotonic) this process does not publish to it:
        # shared by the channels of the app that holds this gate (Celery sends events
        # on several).
        self._quiet_until: dict[FanoutTopic, float] = {}

    def may_quiet(self, topic: FanoutTopic) -> bool:
        """Whether a publish to `topic` may be left out (an event's, not in `always`)."""
        return (topic.exchange in self.exchanges and self.quiet > 0
                and topic.routing_key not in self.always)

    def held(self, topic: FanoutTopic) -> bool:
        """Whether a publish to `topic` is left out now: nobody heard it a moment ago.

        A sender may ask first, so that it does not even make a message nobody hears
        (tasks/queue/ocr_celery.py: Celery's `task-sent` events).
        """
        return (self.may_quiet(topic)
                and time.monotonic() < self._quiet_until.get(topic, float("-inf")))

    def answered(self, topic: FanoutTopic, subscribers: int) -> None:
        """A PUBLISH to `topic` reached `subscribers`: none quiets it for a while."""
        if not self.may_quiet(topic):
            return
        if subscribers:
            self._quiet_until.pop(topic, None)
        else:
            self._quiet_until[topic] = time.monotonic() + self.quiet
