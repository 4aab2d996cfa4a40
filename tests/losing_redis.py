"""A real Redis client whose server loses script loads: a restart or failover between them.

Used by the tests of the Lua runner (tasks/state/lua.py), the state's scripts and the
broker's, which load a script by a `SCRIPT LOAD` command.
"""

from __future__ import annotations

from typing import Any

import redis


class LosingRedis(redis.Redis):
    """A client whose server loses each of its first `losses` script loads.

    As a restart or failover between a SCRIPT LOAD and the EVALSHA after it does: the
    load answers, then the server's scripts are flushed.
    """

    losses = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        answer = super().execute_command(*args, **options)
        loading = args[:1] == ("SCRIPT LOAD",) or args[:2] == ("SCRIPT", "LOAD")
        if loading and self.losses:
            self.losses -= 1
            self.script_flush()
        return answer


def losing_redis(url: str) -> LosingRedis:
    """A `LosingRedis` of `url`, with a pool of its own."""
    return LosingRedis(connection_pool=redis.ConnectionPool.from_url(url))
