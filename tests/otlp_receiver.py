"""The tests' import path of the OTLP/HTTP trace receiver: devkit/otlp_receiver.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.otlp_receiver import (
    KINDS,
    OtlpReceiver,
    ReceivedSpan,
)

__all__ = [
    "KINDS",
    "OtlpReceiver",
    "ReceivedSpan",
]
