"""The tests' import path of Redis that fails over: devkit/ha.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.ha import (
    DOWN_AFTER_MS,
    FAILOVER_TIMEOUT_MS,
    MASTER,
    MovingEndpoint,
    RedisHA,
    RedisNode,
    wait_gone,
)

__all__ = [
    "DOWN_AFTER_MS",
    "FAILOVER_TIMEOUT_MS",
    "MASTER",
    "MovingEndpoint",
    "RedisHA",
    "RedisNode",
    "wait_gone",
]
