"""Flower's broker view (its Broker page, `/api/queues/length`) on the project's Redis.

Runs in the Flower process only (scripts/run_flower.py installs it). Flower reads the
queue lengths itself, from a client it builds out of the broker URL's scheme: the
project's transport names its class there (`tasks.broker.transport:Transport://...`),
which Flower's factory does not know, and its Sentinel client asks the first Sentinel
only. Here the lengths come from the one connection factory (`connect`: direct,
TLS, or whichever primary the Sentinels name now, so the view follows a failover) and
are the figure the metrics exporter serves (`QueueDepth.waiting`: every priority list
of a queue). A RabbitMQ broker keeps Flower's own view.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from tasks.broker import lanes
from tasks.metrics.queue_depth import QueueDepth
from tasks.settings import Settings
from tasks.state.connection import connect


class QueueLengths:
    """What Flower's views ask of a broker: `await queues(names)`."""

    def __init__(self, depth: QueueDepth) -> None:
        self._depth = depth

    async def queues(self, names: Iterable[str]) -> list[dict[str, Any]]:
        # The service's queues alone: Flower's Redis user counts those and no other
        # (a worker's direct queue, `<node>.dq2`, is not shown).
        wanted = [name for name in names if lanes.laned(name)]
        # A blocking client: read off the event loop, which serves every other page.
        waiting = await asyncio.get_running_loop().run_in_executor(
            None, self._depth.waiting, wanted)
        return [{"name": name, "messages": waiting[name]} for name in wanted]


def install(settings: Settings, transport_options: dict[str, Any]) -> None:
    """Make Flower's handlers read a Redis broker's queues through `QueueLengths`."""
    target = settings.broker_target
    if target is None:
        return  # RabbitMQ: Flower's own view (its management API, when configured)
    from flower.views import BaseHandler

    if isinstance(getattr(BaseHandler, "ocr_queue_lengths", None), QueueLengths):
        return  # installed already (Flower reads the app more than once)
    lengths = QueueLengths(QueueDepth(connect(target, patient=False), transport_options))
    BaseHandler.ocr_queue_lengths = lengths

    def get_broker(handler: Any) -> QueueLengths:
        return lengths

    BaseHandler.get_broker = get_broker
