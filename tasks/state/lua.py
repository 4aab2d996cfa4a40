"""The state's Lua scripts, run by their SHA: a script's text crosses the wire on a load only.

Runs in every process that writes job state (clients, the `api` process, worker pool
children). A `Script`'s command is `EVALSHA <sha> ...`. A server that does not know the
script (a restart, a failover to a replica that never ran it) answers NOSCRIPT: the
script is loaded (`SCRIPT LOAD`) and its command sent again. In a pipeline without a
transaction (`queue`, then `execute`), the pipeline's other commands have run by then,
and the script's command alone is sent again, after them: a script queued so must not
rely on running before the pipeline's later commands (those in this package do not).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError

from tasks.errors import TransientError

_BY_SHA: dict[str, Script] = {}
# Loads of a script one call makes before it gives up (each after a NOSCRIPT answer).
LOADS = 3


class Script:
    """A Lua script known by its SHA1."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        _BY_SHA[self.sha] = self

    def __call__(self, client: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Run the script through `client`; loaded first where its server lacks it.

        A server that lacks it again right after its load (a restart or a failover
        between the two commands) has it loaded again, up to LOADS times; then the
        call is `TransientError` (retryable), never a job's internal error.
        """
        for _ in range(LOADS):
            try:
                return client.evalsha(self.sha, len(keys), *keys, *args)
            except NoScriptError:
                client.script_load(self.text)
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError as exc:
            raise TransientError(f"Redis lost a script as it was loaded {LOADS} times "
                                 "(restarting or failing over); the job is retried") from exc

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """Queue the script's command in `pipe` (no transaction; run by `execute`)."""
        return pipe.evalsha(self.sha, len(keys), *keys, *args)


def answers(pipe: Any) -> list[Any]:
    """Run `pipe` as `execute` does; a command's error is its answer, not raised.

    Raises only what fails the whole pipeline (the connection's errors).
    """
    sent = [args for args, _ in pipe.command_stack]
    got = list(pipe.execute(raise_on_error=False))
    for i, answer in enumerate(got):
        script = _BY_SHA.get(str(sent[i][1])) if isinstance(answer, NoScriptError) else None
        if script is not None:
            try:
                got[i] = script(redis.Redis(connection_pool=pipe.connection_pool),
                                sent[i][3:3 + int(sent[i][2])], sent[i][3 + int(sent[i][2]):])
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
