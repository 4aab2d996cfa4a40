"""The tests' import path of moto's S3 emulator: devkit/moto_s3.py, re-exported.

The code lives in devkit/, which the benchmarks import too; tests import either.
"""

from __future__ import annotations

from devkit.moto_s3 import (
    AWS,
    MotoS3,
)

__all__ = [
    "AWS",
    "MotoS3",
]
