"""A worker's publishes no Redis replica confirmed, kept to be sent again after a switch.

Runs in every worker process that publishes behind Sentinel with OCR_REDIS_MIN_REPLICAS
(pool children: page tasks, callbacks, retries). Such a publish that no replica
confirmed goes on (short of replicas, or in its server's window without WAITs:
tasks/broker/publishing.py); it is then on that primary alone, and should the
Sentinels replace it, it is thrown away with the primary's other unreplicated writes.
So it is kept here, by server. Once this process's publishes reach another server and
the Sentinels no longer name the first, its publishes are sent again to the new primary
(a copy that survives after all is read once: the end claim, the page join). A WAIT on
a server answered in full confirms every publish made there before it (Redis
replicates in the order it executes), and those are dropped.

Kept for KEPT_SECONDS at most (a switch's writes are thrown away within seconds of
it), KEPT_MESSAGES at most (the oldest dropped first, logged). Pure: no Redis here.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

KEPT_SECONDS = 60.0
KEPT_MESSAGES = 5000
LOOK_SECONDS = 1.0  # how often a kept server is looked up while another one is written to

Server = tuple[Any, ...]


@dataclass(frozen=True)
class PendingPublish:
    """One publish: when it went out, its queue, its commands (to send again as they are)."""

    at: float
    queue: str
    commands: list[list[Any]]


@dataclass
class PendingPublishes:
    """The publishes of one process no replica confirmed, by the server that took them."""

    by_server: dict[Server, deque[PendingPublish]] = field(default_factory=dict)
    looked: dict[Server, float] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)  # a forked child keeps none of its parent's

    def __len__(self) -> int:
        return sum(len(kept) for kept in self.by_server.values())

    def add(self, server: Server, publish: PendingPublish) -> None:
        """Keep `publish`, which `server` took and no replica confirmed."""
        self._own()
        kept = self.by_server.setdefault(server, deque())
        kept.append(publish)
        if len(self) > KEPT_MESSAGES:
            oldest = min(self.by_server, key=lambda s: self.by_server[s][0].at)
            dropped = self.by_server[oldest].popleft()
            self._forget_empty(oldest)
            log.warning("more than %d published messages wait for a Redis replica to "
                        "confirm them; the oldest (to queue %s) is no longer kept to be "
                        "sent again after a failover", KEPT_MESSAGES, dropped.queue)

    def confirmed(self, server: Server, since: float) -> None:
        """A WAIT on `server` begun at `since` was answered in full: what went before is safe."""
        kept = self.by_server.get(server)
        while kept and kept[0].at < since:
            kept.popleft()
        self._forget_empty(server)

    def due(self, server: Server, now: float) -> list[Server]:
        """The other servers with kept publishes to look up now, `server` being written to.

        Publishes older than KEPT_SECONDS are dropped first. A server is looked up at
        most once every LOOK_SECONDS (`looked_up`). None in a forked child.
        """
        self._own()
        for other in list(self.by_server):
            kept = self.by_server[other]
            while kept and now - kept[0].at > KEPT_SECONDS:
                kept.popleft()
            self._forget_empty(other)
        return [other for other in self.by_server if other != server and
                now - self.looked.get(other, float("-inf")) >= LOOK_SECONDS]

    def looked_up(self, server: Server, now: float) -> None:
        """`server` was looked up at `now`: still the primary."""
        self.looked[server] = now

    def take(self, server: Server) -> list[PendingPublish]:
        """Every publish kept for `server`, no longer kept (to be sent again)."""
        self.looked.pop(server, None)
        return list(self.by_server.pop(server, ()))

    def give_back(self, server: Server, publishes: Iterable[PendingPublish]) -> None:
        """Keep `publishes` for `server` again, ahead of any kept since (a resend failed)."""
        kept = self.by_server.setdefault(server, deque())
        kept.extendleft(reversed(list(publishes)))

    def _own(self) -> None:
        """In a forked child, drop what the parent kept: the parent sends its own again."""
        if self.pid != os.getpid():
            self.by_server, self.looked, self.pid = {}, {}, os.getpid()

    def _forget_empty(self, server: Server) -> None:
        if not self.by_server.get(server, True):
            del self.by_server[server]
            self.looked.pop(server, None)
