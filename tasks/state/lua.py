"""Every Lua script of the service, run by its SHA: a script's text crosses the wire on a load only.

Runs in every process that runs a script: clients, the `api` process and worker pool
children (the state's and the API's scripts), publishers and the worker parent (the
broker's: the push, the fetch, the holders' sweep), the metrics exporter (a queue's
depth). A `Script`'s command is
`EVALSHA <sha> ...`. A process loads a script (`SCRIPT LOAD`) before its first run on
each connection pool. A server that does not know it (a restart, a failover to a
replica that never ran it) answers NOSCRIPT: the script is loaded and its command sent
again, up to LOADS times; then `ScriptLost` is raised.

A script runs in one of four ways:
- alone (`Script.run`, or `run` with a command `Script.command` built; a script that
  only reads, as a user that may only read: `Script.run_read_only`);
- in a pipeline without a transaction (`Script.queue`, then `execute` or `answers`): a
  command answered NOSCRIPT is sent again alone, after the pipeline's other commands,
  so a script queued so must not rely on running before them;
- in a transaction (`Script.queue` in a MULTI): its `SCRIPT LOAD` is queued in the same
  transaction just before it, one answer more in the transaction's reply;
- sent raw on a connection (the broker's fetch, `Script.command`): its sender loads it
  (`reload`) where the answer is NOSCRIPT.

Keys a script reads but a caller's Redis user may not write go in its ARGV, not its
KEYS: Redis checks a script's KEYS against the caller's user as keys it writes
(tasks/redis_users.py), and checks each command the script calls on a key as that
command. So a status read names the result key in ARGV (tasks/state/job_state.py), as
do the stored-bytes sum (tasks/state/stored_bytes.py) and the metrics' depth scripts.

redis-py's `register_script` runs by SHA too, but asks `SCRIPT EXISTS` before every
pipeline that holds a script (one command and one round trip more each), loads a lost
script once only, and builds no raw command for a connection (docs/scaling.md, "Lua
scripts").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from tasks.errors import TransientError

_BY_SHA: dict[str, Script] = {}
_LOADED: set[tuple[int, str]] = set()  # (connection pool, sha) this process loaded
# Loads of a script one run makes after NOSCRIPT answers before it gives up (a server
# restarting or failing over can lose a script again right after its load).
LOADS = 3


class ScriptLost(NoScriptError, TransientError):
    """Redis lost a script as it was loaded, LOADS times: a restart or a failover. Retryable."""

    default_message = (f"Redis lost a script as it was loaded {LOADS} times "
                       "(restarting or failing over); try again")


class Script:
    """A Lua script known by its SHA1."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _BY_SHA[self.sha] = self

    def command(self, keys: Sequence[Any], args: Sequence[Any]) -> list[Any]:
        """`EVALSHA` of this script over `keys` and `args`."""
        return ["EVALSHA", self.sha, len(keys), *keys, *args]

    def load(self, client: Any) -> None:
        """Load the script on `client`'s server (one command; queued, in a pipeline)."""
        client.execute_command("SCRIPT", "LOAD", self.text)

    def run(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run the script through `client` (loaded first where the server lacks it)."""
        return run(client, self.command(keys, args))

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Queue the script's command in `pipe` (see the module's note)."""
        return queue(pipe, self.command(keys, args))

    def run_read_only(self, client: Any, keys: Sequence[Any], args: Sequence[Any] = ()) -> Any:
        """Run a script that only reads, as a user that may only read (`EVALSHA_RO`).

        Where the server lacks it, `EVAL_RO` sends its text, which leaves it in the
        server's cache: such a user may not `SCRIPT LOAD`.
        """
        try:
            return client.evalsha_ro(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval_ro(self.text, len(keys), *keys, *args)


def run(client: Any, command: list[Any]) -> Any:
    """Send an `EVALSHA` `command` through `client`; on NOSCRIPT, load and send again.

    Up to LOADS loads while the server lacks it again right after its load; then
    `ScriptLost`.
    """
    preload(client, command)
    for _ in range(LOADS):
        try:
            return client.execute_command(*command)
        except NoScriptError:
            reload(client, command)
    try:
        return client.execute_command(*command)
    except NoScriptError as exc:
        raise ScriptLost() from exc


def queue(pipe: Any, command: list[Any]) -> Any:
    """Queue an `EVALSHA` `command` in `pipe`: in a transaction, its load just before it."""
    if getattr(pipe, "transaction", False) or getattr(pipe, "explicit_transaction", False):
        reload(pipe, command)
    elif _loaded(pipe, command) not in _LOADED:  # loaded at once, not in the pipeline
        preload(redis.Redis(connection_pool=pipe.connection_pool), command)
    return pipe.execute_command(*command)


def preload(client: Any, command: Sequence[Any]) -> None:
    """Load the script an `EVALSHA` `command` names, once by this process on `client`'s pool.

    Another command (a publish's plain `LPUSH`): nothing.
    """
    if command[0] != "EVALSHA":
        return
    if _loaded(client, command) not in _LOADED:
        reload(client, command)
        _LOADED.add(_loaded(client, command))


def _loaded(client: Any, command: Sequence[Any]) -> tuple[int, str]:
    """The entry of `_LOADED` for `command`'s script on `client`'s pool."""
    return id(getattr(client, "connection_pool", client)), str(command[1])


def reload(client: Any, command: Sequence[Any]) -> None:
    """Load the script an `EVALSHA` `command` names (the server answered NOSCRIPT)."""
    _BY_SHA[str(command[1])].load(client)


def answers(pipe: Any) -> list[Any]:
    """Run `pipe` (no transaction) as `execute` does; a command's error is its answer.

    A script its server lacked is loaded and its command sent again alone. Raises only
    what fails the whole pipeline (the connection's errors).
    """
    sent = [args for args, _ in pipe.command_stack]
    got = list(pipe.execute(raise_on_error=False))
    for i, answer in enumerate(got):
        if isinstance(answer, NoScriptError) and str(sent[i][1]) in _BY_SHA:
            try:
                got[i] = run(redis.Redis(connection_pool=pipe.connection_pool), list(sent[i]))
            except redis.ResponseError as exc:
                got[i] = exc
    return got


def execute(pipe: Any) -> list[Any]:
    """Run `pipe` (no transaction); a queued script its server lacked is loaded and run.

    Raises the first error among the answers, as `pipe.execute()` does.
    """
    got = answers(pipe)
    for answer in got:
        if isinstance(answer, Exception):
            raise answer
    return got
