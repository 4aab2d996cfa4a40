"""A fetch's bytes: the same as redis-py packs the whole command, its repeated parts kept."""

from __future__ import annotations

import redis

from tasks.broker.fetch_script import (
    fetch_command,
    fetch_parts,
    fetch_tail,
    split_acks,
    unnamed,
)
from tasks.broker.layout import list_held_key
from tasks.broker.wire import FetchBytes

LISTS = ((("ocr", 0, True, True), ("ocr\x06\x163", 3, True, True),
          ("host.dq2", 0, False, True)))


def test_a_fetch_is_packed_as_redis_py_packs_it() -> None:
    connection = redis.Connection()  # packs; never connects
    wire = FetchBytes()
    held = list_held_key("ocr\x06\x163")
    for now, acks in (("1.5", ()), ("2.25", ((held, "tag-1"), (held, "tag-2"))),
                      ("3.0", ((held, "é"),))):
        parts = fetch_parts("", LISTS, 1 << 20)
        riding, alone = split_acks(parts, acks)
        assert not alone and len(riding) == len(acks)
        tail = fetch_tail(True, False, "node|1", "tag-0", riding, unnamed(parts, {"ocr"}))
        command = [*parts[0], now, *parts[1], *tail]
        assert command == fetch_command("", list(LISTS), float(now), 1 << 20,
                                        holder="node|1", tag="tag-0", acks=acks,
                                        named={"ocr"})
        assert wire.fetch(connection.encoder, parts, now, tail) == \
            b"".join(connection.pack_command(*command))


def test_the_repeated_parts_are_made_once_while_the_lists_stay() -> None:
    first = fetch_parts("", LISTS, 0)
    assert fetch_parts("", tuple(LISTS), 0) is first
    assert fetch_parts("", LISTS[:2], 0) is not first


def test_an_acknowledgement_rides_where_the_fetch_names_its_hash() -> None:
    parts = fetch_parts("", LISTS, 0)
    keys = list(parts[0][3:])
    riding, alone = split_acks(parts, [(list_held_key("ocr"), "a"),
                                       (list_held_key("other"), "b")])
    k = int(riding[0].split(":")[0])
    assert riding == [f"{k}:a"] and keys[k - 1] == list_held_key("ocr")
    assert alone == [(list_held_key("other"), "b")]


def test_a_fetch_names_the_lists_its_caller_has_not_seen_named() -> None:
    parts = fetch_parts("", LISTS, 0)
    assert unnamed(parts, ()) == ["0", "1", "2"]
    assert unnamed(parts, {"ocr", "host.dq2"}) == ["2"]  # entries go a step at a time
    # a consumer that acknowledges nothing holds nothing: no list to name
    assert unnamed(fetch_parts("", (("ocr", 0, True, False),), 0), ()) == []
