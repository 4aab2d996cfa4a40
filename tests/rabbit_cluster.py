"""The tests' import path of the RabbitMQ cluster: devkit/rabbit_cluster.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.rabbit_cluster import (
    RABBIT_BIN,
    TAKEN,
    RabbitCluster,
    RabbitNode,
    cluster_missing,
    version,
)

__all__ = [
    "RABBIT_BIN",
    "RabbitCluster",
    "RabbitNode",
    "TAKEN",
    "cluster_missing",
    "version",
]
