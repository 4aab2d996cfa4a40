"""The tests' import path of the character error rate: devkit/cer.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.cer import (
    cer,
    normalize,
)

__all__ = [
    "cer",
    "normalize",
]
