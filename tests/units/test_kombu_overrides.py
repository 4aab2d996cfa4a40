"""The kombu private names tasks/broker overrides still exist, on the kombu they were read against.

tasks/broker/__init__.py lists every private kombu (and redis-py) name the broker's
channel, QoS and Sentinel channel override or call, with the versions they were read
against; a kombu or redis-py upgrade fails here first, until the overrides are read
again against it and the pins moved.
"""

from __future__ import annotations

import kombu
import pytest
import redis
from kombu.transport import redis as kombu_redis

from tasks import broker
from tasks.broker import layout


def test_kombu_is_the_version_the_overrides_were_read_against() -> None:
    assert kombu.__version__ == broker.KOMBU_VERSION, (
        f"kombu {kombu.__version__} is installed; tasks/broker overrides were read "
        f"against {broker.KOMBU_VERSION}: read each override listed in "
        "tasks/broker/__init__.py against it, then move KOMBU_VERSION")


def test_redis_py_is_the_version_the_bounded_parser_was_read_against() -> None:
    assert redis.__version__ == broker.REDIS_PY_VERSION


@pytest.mark.parametrize("owner", sorted(broker.KOMBU_OVERRIDES))
def test_each_overridden_name_exists_on_kombus_class(owner: str) -> None:
    cls = getattr(kombu_redis, owner)
    missing = [name for name in broker.KOMBU_OVERRIDES[owner] if not hasattr(cls, name)]
    assert not missing, f"kombu's {owner} no longer has {missing}"


def test_every_private_override_of_the_channels_is_listed() -> None:
    from tasks.broker.sentinel_transport import SentinelChannel
    from tasks.broker.transport import Channel
    from tasks.broker.unsettled import QoS

    for ours, owner in ((Channel, "Channel"), (QoS, "QoS"),
                        (SentinelChannel, "SentinelChannel")):
        base = getattr(kombu_redis, owner)
        overridden = {name for name in vars(ours)
                      if hasattr(base, name) and not name.startswith("__")}
        listed = set(broker.KOMBU_OVERRIDES[owner]) | {"QoS", "connection_class",
                                                        "connection_class_ssl"}
        assert overridden <= listed, f"{owner} overrides {overridden - listed}, not listed"


def test_the_layout_names_are_kombus_defaults() -> None:
    channel = kombu_redis.Channel
    assert (channel.sep, channel.unacked_key, channel.unacked_index_key,
            channel.unacked_mutex_key) == (layout.SEP, *layout.UNACKED_KEYS)
    assert tuple(kombu_redis.PRIORITY_STEPS) == layout.PRIORITY_STEPS
    assert channel.keyprefix_queue == layout.BINDING_PREFIX + "%s"
