"""The kombu private names tasks/broker overrides exist on the installed kombu, one of the range.

tasks/broker/__init__.py lists every private kombu name the broker's channel, QoS and
Sentinel channel override or call, with the kombu minors they were read against:
requirements.txt's range. Whichever version of it is installed (`make test` runs its
top, `make test-floor` its floor), it must be one that was read, and have each name; a
kombu outside it fails here first, until the overrides are read again against it and
the range moved. No private name of redis-py is used (the scripts bound a message's
length on the server: tasks/broker/oversized.py), so its version is not checked here.
"""

from __future__ import annotations

import ast
import re

import celery
import kombu
import pytest
from kombu.transport import redis as kombu_redis
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tasks import broker
from tasks.broker import layout
from tests.harness import ROOT


def required(name: str) -> SpecifierSet:
    """requirements.txt's version range of `name`."""
    text = (ROOT / "requirements.txt").read_text()
    found = re.search(rf"^{re.escape(name)}(\[[^\]]*\])?([<>=!~][^\s#;]*)", text, re.M)
    assert found, f"requirements.txt names no {name}"
    return SpecifierSet(found.group(2))


def minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


@pytest.mark.parametrize("name, installed", [("kombu", kombu.__version__),
                                             ("celery", celery.__version__)])
def test_kombu_and_celery_are_of_the_minors_the_overrides_were_read_against(
        name: str, installed: str) -> None:
    assert minor(installed) in broker.KOMBU_MINORS, (
        f"{name} {installed} is installed; tasks/broker overrides were read against "
        f"{broker.KOMBU_MINORS}: read each override listed in tasks/broker/__init__.py "
        "against it, then add its minor to KOMBU_MINORS and requirements.txt's range")
    assert Version(installed) in required(name)


def test_the_requirements_range_is_the_minors_read() -> None:
    for name in ("kombu", "celery[redis]"):
        spec = required(name.split("[")[0])
        assert [m for m in ("5.5", "5.6", "5.7", "5.8") if Version(f"{m}.0") in spec] == \
            list(broker.KOMBU_MINORS), f"{name}{spec}"


def test_no_private_name_of_redis_py_is_imported() -> None:
    """The service imports only redis-py's public modules and names."""
    found = []
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = [alias.name for alias in node.names] \
                if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            found += [f"{path.relative_to(ROOT)}:{node.lineno}: {name}" for name in modules
                      if name.split(".")[0] == "redis"
                      and any(part.startswith("_") for part in name.split("."))]
    assert not found, "\n".join(found)


def expected_names(owner: str) -> tuple[list[str], list[str]]:
    """(the names the installed kombu must have, those it must not: 5.7's on a 5.6)."""
    names = list(broker.KOMBU_OVERRIDES[owner])
    later = broker.SINCE_KOMBU_5_7.get(owner, ())
    if Version(kombu.__version__) >= Version("5.7"):
        return names, []
    return [n for n in names if n not in later], list(later)


@pytest.mark.parametrize("owner", sorted(broker.KOMBU_OVERRIDES))
def test_each_overridden_name_exists_on_kombus_class(owner: str) -> None:
    cls = getattr(kombu_redis, owner)
    has, lacks = expected_names(owner)
    missing = [name for name in has if not hasattr(cls, name)]
    assert not missing, f"kombu {kombu.__version__}'s {owner} no longer has {missing}"
    present = [name for name in lacks if hasattr(cls, name)]
    assert not present, f"kombu {kombu.__version__}'s {owner} has {present}: not 5.7's alone"


def test_the_names_of_5_7_alone_are_overridden_or_called() -> None:
    for owner, names in broker.SINCE_KOMBU_5_7.items():
        assert set(names) <= set(broker.KOMBU_OVERRIDES[owner]), owner


def test_every_private_override_of_the_channels_is_listed() -> None:
    from tasks.broker.sentinel_transport import SentinelChannel
    from tasks.broker.transport import Channel
    from tasks.broker.unsettled import QoS

    checked = {Channel: "Channel", QoS: "QoS", SentinelChannel: "SentinelChannel"}
    for ours, owner in checked.items():
        base = getattr(kombu_redis, owner)
        # ours, and the classes of ours it extends up to one checked on its own
        # (`Channel`: the publishing channel too; `SentinelChannel`: itself alone)
        own = [ours]
        for cls in ours.__mro__[1:]:
            if cls in checked or not cls.__module__.startswith("tasks."):
                break
            own.append(cls)
        overridden = {name for cls in own for name in vars(cls)
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


@pytest.mark.parametrize("priority", [None, "x", -3, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 255, "7"])
@pytest.mark.parametrize("steps", [layout.PRIORITY_STEPS, (0, 5), tuple(range(10))])
def test_a_messages_list_is_the_one_a_stock_kombu_client_pushes_to(
        priority: object, steps: tuple[int, ...]) -> None:
    """`layout.message_step` and `queue_list` name the list kombu's own `_put` uses."""
    channel = object.__new__(kombu_redis.Channel)  # kombu's rule, read without a connection
    channel.priority_steps, channel.sep = steps, layout.SEP
    message = {"properties": {} if priority is None else {"priority": priority}}
    kombus = channel._q_for_pri("ocr", channel._get_message_priority(message, reverse=False))
    step = layout.message_step(message, steps)
    assert layout.queue_list("ocr", step) == kombus
