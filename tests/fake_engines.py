"""The tests' import path of the fake engines: devkit/fake_engines.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.fake_engines import (
    BrokenEngine,
    FakeEngine,
    FakeModelEngine,
    FlakyOnDarkEngine,
    KillerEngine,
    LayoutBreakingEngine,
    LayoutKillingEngine,
    LeakyEngine,
    MarkdownModelEngine,
    PeakMemoryEngine,
    RaisingOnDarkEngine,
    SlowOnDarkEngine,
    StuckOnDarkEngine,
    TransientOnDarkEngine,
)

__all__ = [
    "BrokenEngine",
    "FakeEngine",
    "FakeModelEngine",
    "FlakyOnDarkEngine",
    "KillerEngine",
    "LayoutBreakingEngine",
    "LayoutKillingEngine",
    "LeakyEngine",
    "MarkdownModelEngine",
    "PeakMemoryEngine",
    "RaisingOnDarkEngine",
    "SlowOnDarkEngine",
    "StuckOnDarkEngine",
    "TransientOnDarkEngine",
]
