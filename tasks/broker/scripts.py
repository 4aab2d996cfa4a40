"""The broker's Lua scripts, run by their SHA: loaded once per server, never sent whole.

Runs in whichever process runs a script of the broker (publishers: the lanes' push;
the worker parent: the fetch, the holders' sweep; queue_declare's count). Each script
is a `Script`: its command is `EVALSHA <sha> ...`. A process loads it (`SCRIPT LOAD`)
before its first run on each connection pool (`run`; the fetch, sent raw, on NOSCRIPT
only); a server that does not know it (a restart, a failover to a replica that never
ran it) answers NOSCRIPT, and the caller loads it and sends the command again (up to
`LOADS` times while the server loses it again as it loads). A script run inside a
transaction (kombu's restore) is loaded in the same MULTI, just before it.

kombu's client with a global key prefix prefixes the first key of an EVALSHA itself
(`keyed`); a command sent raw on a connection (the fetch) is not prefixed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from redis.exceptions import NoScriptError

_BY_SHA: dict[str, Script] = {}
_LOADED: set[tuple[int, str]] = set()  # (connection pool, sha) this process loaded
# Loads of a script one run makes after NOSCRIPT answers before the answer is raised (a
# server restarting or failing over can lose a script again right after its load).
LOADS = 3


class Script:
    """A Lua script known by its SHA1."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _BY_SHA[self.sha] = self

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        """`EVALSHA` of this script over `keys` (named in full) and `args`."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def load(self, client: Any) -> None:
        """Load the script on `client`'s server (one command)."""
        client.execute_command("SCRIPT", "LOAD", self.text)

    def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script through `client` (loaded first where the server lacks it)."""
        return run(client, self.command(keys, args))


def keyed(client: Any, command: list[Any]) -> list[Any]:
    """`command` for `client`: without the global key prefix on a first key it adds."""
    prefix = getattr(client, "global_keyprefix", "") or ""
    if prefix and command[0] == "EVALSHA" and command[2] and \
            str(command[3]).startswith(prefix):
        return [*command[:3], str(command[3])[len(prefix):], *command[4:]]
    return command


def run(client: Any, command: list[Any]) -> Any:
    """Send an `EVALSHA` `command` through `client`; on NOSCRIPT, load and send again.

    Up to LOADS loads while the server lacks it again right after its load; then that
    NoScriptError is raised.
    """
    command = keyed(client, command)
    preload(client, command)
    for _ in range(LOADS):
        try:
            return client.execute_command(*command)
        except NoScriptError:
            reload(client, command)
    return client.execute_command(*command)


def preload(client: Any, command: Sequence[Any]) -> None:
    """Load the script an `EVALSHA` `command` names, once by this process on `client`'s pool.

    Before its first run there: a NOSCRIPT answer on a kombu pool's connection costs
    that pool a second connection. Another command: nothing.
    """
    if command[0] != "EVALSHA":
        return
    pool = id(getattr(client, "connection_pool", client))
    if (pool, str(command[1])) not in _LOADED:
        reload(client, command)
        _LOADED.add((pool, str(command[1])))


def queue(pipe: Any, command: list[Any]) -> None:
    """Queue an `EVALSHA` `command` in `pipe` (a transaction), its script loaded just before."""
    reload(pipe, command)
    pipe.execute_command(*keyed(pipe, command))


def reload(client: Any, command: Sequence[Any]) -> None:
    """Load the script an `EVALSHA` `command` names (the server answered NOSCRIPT)."""
    _BY_SHA[str(command[1])].load(client)
