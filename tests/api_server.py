"""The tests' import path of the `api` process and its clients: devkit/api_server.py.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.api_server import (
    FINAL,
    ApiServer,
    create_token,
    session,
    wait_end,
)

__all__ = [
    "FINAL",
    "ApiServer",
    "create_token",
    "session",
    "wait_end",
]
