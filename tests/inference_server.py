"""The tests' import path of the inference servers: devkit/inference_server.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.inference_server import (
    SERVER_ENV,
    SimulatedInferenceServer,
    VlmServer,
)

__all__ = [
    "SERVER_ENV",
    "SimulatedInferenceServer",
    "VlmServer",
]
