"""A fake engine that holds each page until the test opens a gate (queue mechanics only).

Loaded by real workers as a plugin (OCR_ENGINE_PLUGINS); its text only describes the
image. `FAKE_GATE_DIR`: each page it starts writes `started-<pid>-<n>` there, then waits
until a file `open` appears (at most FAKE_GATE_SECONDS, default 300, then it fails).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from PIL import Image

from tasks.engines import PageResult, RecognizeOptions
from tasks.errors import EngineFailed
from tests.fake_engines import FakeEngine


class GatedEngine(FakeEngine):
    """A fake: holds every page until `FAKE_GATE_DIR/open` exists."""

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        gate = Path(os.environ["FAKE_GATE_DIR"])
        (gate / f"started-{os.getpid()}-{time.monotonic_ns()}").touch()
        deadline = time.monotonic() + float(os.environ.get("FAKE_GATE_SECONDS", "300"))
        while not (gate / "open").exists():
            if time.monotonic() > deadline:
                raise EngineFailed("the gated fake engine's gate never opened")
            time.sleep(0.05)
        return super().recognize(image, options)


class CacheGatedEngine(FakeEngine):
    """A fake whose `release_cache` (after each task) holds until `FAKE_GATE_DIR/open` exists.

    Each wait first writes `releasing-<n>` there: a task's end is then under way, in
    the middle of the registry's pass over its engines.
    """

    thread_safe = True

    def release_cache(self) -> dict[str, float]:
        gate = Path(os.environ["FAKE_GATE_DIR"])
        (gate / f"releasing-{time.monotonic_ns()}").touch()
        deadline = time.monotonic() + float(os.environ.get("FAKE_GATE_SECONDS", "300"))
        while not (gate / "open").exists():
            if time.monotonic() > deadline:
                raise EngineFailed("the cache-gated fake engine's gate never opened")
            time.sleep(0.05)
        return {}
