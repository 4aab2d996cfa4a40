"""Routing: a job that names an engine goes to that engine's queue."""

from __future__ import annotations

from tasks.queue.routing import route_task


def test_routing_by_engine() -> None:
    assert route_task("ocr.document", (), {"engine": "mlx-vlm"}, {}) == {"queue": "ocr-mlx-vlm"}
    assert route_task("ocr.document", (), {}, {}) is None
