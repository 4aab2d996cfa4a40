"""Routing: a job that names an engine goes to that engine's queue; batch steps to theirs."""

from __future__ import annotations

from tasks.queue.routing import BATCH_QUEUE, CONTROL_QUEUE, is_job_queue, route_task


def test_routing_by_engine() -> None:
    assert route_task("ocr.document", (), {"engine": "mlx-vlm"}, {}) == {"queue": "ocr-mlx-vlm"}
    assert route_task("ocr.document", (), {}, {}) is None


def test_batch_steps_go_to_their_own_queue_not_the_control_queue() -> None:
    assert route_task("ocr.batch_step", (), {}, {}) == {"queue": BATCH_QUEUE}
    assert route_task("ocr.cancel", (), {}, {}) == {"queue": CONTROL_QUEUE}
    assert not is_job_queue(BATCH_QUEUE) and BATCH_QUEUE != CONTROL_QUEUE
