"""The transport is our own, on kombu's virtual transport: the names it overrides exist there.

tasks/broker/__init__.py lists every name of kombu's virtual Channel, QoS and Transport
that the broker's classes override (`KOMBU_HOOKS`) and the few private ones they read
(`KOMBU_PRIVATE_READS`), with the kombu minors they were read against: requirements.txt's
range. Whichever version of it is installed (`make test` runs its top, `make test-floor`
its floor), it must be one that was read, and have each name; a kombu outside it fails
here first. Nothing in tasks/ imports kombu's Redis transport, and no private name of
redis-py is imported.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import celery
import kombu
import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tasks import broker
from tasks.broker import layout, stored_layout
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


def imports_of_tasks() -> Iterator[tuple[str, str]]:
    """(`path:line`, dotted name) of each module and name tasks/ imports."""
    for path in sorted((ROOT / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] \
                if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                yield f"{path.relative_to(ROOT)}:{node.lineno}", name


def test_no_private_name_of_redis_py_is_imported() -> None:
    """The service imports only redis-py's public modules and names."""
    found = [f"{where}: {name}" for where, name in imports_of_tasks()
             if name.split(".")[0] == "redis"
             and any(part.startswith("_") for part in name.split("."))]
    assert not found, "\n".join(found)


def redis_private_names() -> set[str]:
    """The private names of redis-py's clients, pools and connections, theirs or an instance's."""
    import redis
    from redis import sentinel

    classes = (redis.Redis, redis.client.PubSub, redis.ConnectionPool, redis.Connection,
               redis.SSLConnection, sentinel.SentinelConnectionPool,
               sentinel.SentinelManagedConnection)
    instances = (redis.Connection(), redis.ConnectionPool(), redis.Redis())
    names = {name for each in (*classes, *instances) for name in dir(each)}
    names |= {name for each in instances for name in vars(each)}
    return {name for name in names if name.startswith("_") and not name.endswith("__")}


def test_the_broker_reads_no_private_name_of_redis_py() -> None:
    """No `x._name` of redis-py's is read in tasks/broker, nor got by `getattr`.

    `self` and `cls` are the broker's own classes (its overridden hooks and its own
    state); `REDIS_HOOKS` names what it overrides, called on its base class.
    """
    private = redis_private_names() - set(broker.REDIS_HOOKS)
    assert "_sock" in private
    found = []
    for path in sorted((ROOT / "tasks" / "broker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            name = None
            if isinstance(node, ast.Attribute) and not (
                    isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                name = node.attr
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "getattr" \
                    and len(node.args) > 1 and isinstance(node.args[1], ast.Constant):
                name = node.args[1].value
            if name in private:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name}")
    assert not found, "\n".join(found)


def test_the_redis_hooks_exist_on_redis_pys_connections() -> None:
    import redis

    for cls in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection):
        assert all(name in vars(cls) or hasattr(cls, name) for name in broker.REDIS_HOOKS)


def test_nothing_imports_kombus_redis_transport() -> None:
    """The transport is our own: kombu's Redis transport is no base of it."""
    found = [f"{where}: {name}" for where, name in imports_of_tasks()
             if name.startswith("kombu.transport.redis")]
    assert not found, "\n".join(found)


@pytest.mark.parametrize("owner", sorted(broker.KOMBU_HOOKS))
def test_each_hook_and_private_read_exists_on_kombus_virtual_class(owner: str) -> None:
    cls = getattr(virtual, owner)
    names = [*broker.KOMBU_HOOKS[owner], *broker.KOMBU_PRIVATE_READS.get(owner, ())]
    # a name set on the instance by the class's __init__, or a class attribute
    set_by_init = set(cls.__init__.__code__.co_names)
    missing = [name for name in names if not hasattr(cls, name) and name not in set_by_init]
    assert not missing, f"kombu {kombu.__version__}'s virtual {owner} no longer has {missing}"


def test_the_hooks_without_a_default_are_called_by_kombus_virtual_transport() -> None:
    source = "".join(path.read_text() for path in
                     sorted(Path(virtual.__file__).parent.glob("*.py")))
    for owner, names in broker.KOMBU_FILLED_HOOKS.items():
        for name in names:
            assert f"channel.{name}(" in source or f"self.{name}(" in source, (owner, name)


def test_only_the_listed_names_of_kombus_virtual_classes_are_overridden() -> None:
    from tasks.broker.qos import QoS
    from tasks.broker.sentinel_transport import SentinelChannel, SentinelTransport
    from tasks.broker.transport import Channel, Transport

    ours = {"Channel": (Channel, SentinelChannel), "QoS": (QoS,),
            "Transport": (Transport, SentinelTransport)}
    for owner, classes in ours.items():
        base = getattr(virtual, owner)
        overridden = {name for cls in classes for each in cls.__mro__
                      if each.__module__.startswith("tasks.")
                      for name in vars(each)
                      if hasattr(base, name) and not name.startswith("__")}
        listed = {*broker.KOMBU_HOOKS[owner], *broker.KOMBU_FILLED_HOOKS.get(owner, ())}
        assert overridden <= listed, f"{owner} overrides {overridden - listed}, not listed"
        private = {name for name in overridden if name.startswith("_")}
        assert private <= listed


def test_the_transport_is_registered_under_its_own_names() -> None:
    from kombu import Connection

    from tasks.broker import transport
    from tasks.broker.sentinel_transport import SentinelTransport

    transport.register_names()
    assert Connection("ocr-redis://127.0.0.1:1/0").transport_cls == "ocr-redis"
    assert type(Connection("ocr-redis://127.0.0.1:1/0").transport) is transport.Transport
    assert type(Connection("ocr-sentinel://127.0.0.1:1/0").transport) is SentinelTransport


def test_the_layout_names_are_kombus_defaults() -> None:
    channel = kombu_redis.Channel
    assert (channel.sep, channel.unacked_mutex_key) == (layout.SEP, layout.UNACKED_MUTEX_KEY)
    # layout 1 kept its records in kombu's own keys (tasks/broker/stored_layout.py)
    assert (channel.unacked_key, channel.unacked_index_key) == (
        stored_layout.UNACKED_KEY, stored_layout.UNACKED_INDEX_KEY)
    assert tuple(kombu_redis.PRIORITY_STEPS) == layout.PRIORITY_STEPS
    assert channel.keyprefix_queue == layout.BINDING_PREFIX + "%s"
    if hasattr(channel, "keyprefix_binding_deadlines"):  # kombu 5.7 on: its sweep's keys
        assert channel.keyprefix_binding_permanent == layout.BINDING_PERMANENT_PREFIX + "%s"
        assert channel.keyprefix_binding_deadlines == layout.KOMBU_DEADLINES_KEY


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
