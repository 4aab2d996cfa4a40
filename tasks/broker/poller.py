"""The poller of the broker's channels: each one's fetch and broadcast connections.

Runs in every process that consumes from the Redis broker. In a worker parent it is
driven by Celery's event loop (`register`: kombu's hook `register_with_event_loop`):
on every turn of the loop each consuming channel that can take a message and has no
fetch in flight sends one (`Channel.fetch_start`: the fetch script, or its wait on the
wake-ups), and a channel bound to a fanout exchange subscribes; the loop calls
`on_readable` when a reply is there. A client, Flower or the exporter drains events
without a loop (`get`, kombu's `drain_events`): the same steps, then one `poll`. Each
turn also keeps the bindings of the expiring queues consumed, and sweeps dead ones,
when due (tasks/broker/binding_expiry.py: when not, a clock's reading and a look at
which expiring queues each channel consumes).

A socket is watched from the fetch that uses it until its connection is dropped
(`forget`, from the connection's `disconnect`: tasks/broker/connections.py), so a
descriptor the kernel reuses is never read for the old connection.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Callable
from queue import Empty
from typing import Any

from tasks.broker import binding_expiry

log = logging.getLogger(__name__)

FETCH, LISTEN = "fetch", "listen"
READ = select.POLLIN | select.POLLPRI
ERRORS = select.POLLERR | select.POLLHUP | select.POLLNVAL


def socket_of(connection: Any) -> Any:
    """The socket of a watched connection (None when it is not connected)."""
    return getattr(connection, "ocr_socket", None)


class Poller:
    """Every channel of one transport, and the sockets the event loop watches for them."""

    def __init__(self) -> None:
        self.channels: list[Any] = []
        self.readers: dict[int, tuple[Any, str, Any]] = {}  # fd -> (channel, kind, conn)
        self.loop: Any = None
        self.in_read = False
        self.after_read: list[Callable[[], None]] = []
        self._timers: list[Any] = []
        self.bindings = binding_expiry.Keeper()

    def add(self, channel: Any) -> None:
        if channel not in self.channels:
            self.channels.append(channel)

    def discard(self, channel: Any) -> None:
        if channel in self.channels:
            self.channels.remove(channel)
        for fd, (owner, _, _) in list(self.readers.items()):
            if owner is channel:
                self._unwatch(fd)

    def close(self) -> None:
        for fd in list(self.readers):
            self._unwatch(fd)
        self.channels.clear()
        for timer in self._timers:
            timer.cancel()
        self._timers = []

    def forget(self, connection: Any) -> None:
        """`connection` is being dropped: its socket is no longer watched."""
        for fd, (channel, kind, conn) in list(self.readers.items()):
            if conn is connection:
                self._unwatch(fd)
                channel.connection_dropped(kind, connection)

    def _unwatch(self, fd: int) -> None:
        self.readers.pop(fd, None)
        if self.loop is not None:
            self.loop.remove(fd)

    def _watch(self, channel: Any, kind: str, connection: Any) -> None:
        sock = socket_of(connection)
        if sock is None:
            return
        fd = sock.fileno()
        known = self.readers.get(fd)
        if known is not None and known[2] is connection:
            return
        self.readers[fd] = (channel, kind, connection)
        if self.loop is not None:
            self.loop.add_reader(fd, self.on_readable, fd)

    def start(self) -> None:
        """Send each channel's next fetch and subscription where none is in flight."""
        for channel in list(self.channels):
            if channel.active_queues and channel.qos.can_consume() \
                    and not channel.fetching():
                channel.fetch_start()
                self._watch(channel, FETCH, channel.fetch_connection())
            if channel.active_fanout_queues and not channel.listening():
                channel.subscribe()
                self._watch(channel, LISTEN, channel.listen_connection())
        self.bindings.keep(self.channels)

    def on_readable(self, fd: int) -> bool:
        """A watched socket has a reply, or was closed by the server.

        Returns whether a message was delivered; raises Empty when the fetch took none.
        """
        known = self.readers.get(fd)
        if known is None:
            return False
        channel, kind, connection = known
        if kind == FETCH:
            if not channel.fetching():
                # No reply is due: the server closed an idle connection. The next
                # fetch connects again.
                connection.disconnect()
                return False
            return bool(channel.fetch_read())
        return bool(channel.receive())

    # -- Celery's event loop ------------------------------------------------------

    def register(self, loop: Any, restore_every: float, health_every: float) -> None:
        """Drive the channels from `loop` (kombu's Hub), its timers included."""
        for timer in self._timers:
            timer.cancel()
        self.loop = loop
        for fd in list(self.readers):
            loop.add_reader(fd, self.on_readable, fd)
        loop.on_tick.add(self.start)
        self._timers = [loop.call_repeatedly(restore_every, self.restore_visible),
                        loop.call_repeatedly(health_every, self.check_health)]

    def restore_visible(self) -> None:
        """Messages past the visibility timeout go back to their queues.

        One channel's sweep covers the server: the records are not the channel's own.
        """
        for channel in self.channels:
            if channel.active_queues:
                try:
                    channel.qos.restore_visible()
                except channel.connection_errors:
                    log.debug("restore of visible messages: connection lost, next turn")
                return

    def check_health(self) -> None:
        """Drop a fetch or broadcast connection whose reply is overdue (a half-open socket).

        A fetch carries a server-side timeout, so a live server answers within it; a
        socket that stays silent past it and a health interval is dead.
        """
        for channel in list(self.channels):
            try:
                channel.check_health(time.monotonic())
            except channel.connection_errors:
                log.debug("health check: connection lost, next turn")

    # -- without an event loop (kombu's drain_events) -----------------------------

    def get(self, callback: Callable[..., Any], timeout: float | None = None) -> None:
        """Deliver what comes within `timeout` s; raise Empty when nothing did."""
        self.in_read = True
        try:
            self.start()
            if not self.readers:
                time.sleep(min(timeout, 1.0) if timeout is not None else 1.0)
                raise Empty()
            poll = select.poll()
            for fd in self.readers:
                poll.register(fd, READ | ERRORS)
            events = poll.poll(None if timeout is None else timeout * 1000)
            for fd, _ in events:
                with contextlib.suppress(Empty):
                    if self.on_readable(fd):
                        return
            self.restore_visible()
            raise Empty()
        finally:
            self.in_read = False
            while self.after_read:
                self.after_read.pop(0)()

    @property
    def fds(self) -> list[int]:
        return list(self.readers)
