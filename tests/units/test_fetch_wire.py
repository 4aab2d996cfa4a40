"""A fetch's bytes: the same as redis-py packs the whole command, its repeated parts kept."""

from __future__ import annotations

import redis

from tasks.broker.lanes import fetch_command, fetch_parts, fetch_tail
from tasks.broker.layout import HELD_KEY
from tasks.broker.wire import FetchBytes

LISTS = ((("ocr", 0, True, True), ("ocr\x06\x163", 3, True, True),
          ("host.dq2", 0, False, True)))


def test_a_fetch_is_packed_as_redis_py_packs_it() -> None:
    connection = redis.Connection()  # packs; never connects
    wire = FetchBytes()
    for now, acks in (("1.5", ()), ("2.25", ("tag-1", "tag-2")), ("3.0", ("é",))):
        parts = fetch_parts("", HELD_KEY, LISTS, 1 << 20)
        tail = fetch_tail(True, False, "node|1", "tag-0", acks)
        command = [*parts[0], now, *parts[1], *tail]
        assert command == fetch_command("", HELD_KEY, list(LISTS), float(now), 1 << 20,
                                        holder="node|1", tag="tag-0", acks=acks)
        assert wire.fetch(connection.encoder, parts, now, tail) == \
            b"".join(connection.pack_command(*command))


def test_the_repeated_parts_are_made_once_while_the_lists_stay() -> None:
    first = fetch_parts("", HELD_KEY, LISTS, 0)
    assert fetch_parts("", HELD_KEY, tuple(LISTS), 0) is first
    assert fetch_parts("", HELD_KEY, LISTS[:2], 0) is not first
