"""Routing: a job that names an engine goes to that engine's queue; batch steps to theirs."""

from __future__ import annotations

from tasks.queue.routing import (
    BATCH_QUEUE,
    CONTROL_QUEUE,
    is_job_queue,
    route_task,
    worker_queues,
)
from tasks.records.engines import engine_names


def test_routing_by_engine() -> None:
    assert route_task("ocr.document", (), {"engine": "mlx-vlm"}, {}) == {"queue": "ocr-mlx-vlm"}
    assert route_task("ocr.document", (), {}, {}) is None


def test_batch_steps_go_to_their_own_queue_not_the_control_queue() -> None:
    assert route_task("ocr.batch_step", (), {}, {}) == {"queue": BATCH_QUEUE}
    assert route_task("ocr.cancel", (), {}, {}) == {"queue": CONTROL_QUEUE}
    assert not is_job_queue(BATCH_QUEUE) and BATCH_QUEUE != CONTROL_QUEUE


def test_a_worker_consumes_what_it_is_told_and_routes_only_from_ocr() -> None:
    known = engine_names()
    # Told only engines' queues: exactly those, and its own engine's.
    assert worker_queues(["ocr-vlm-api"], ["vlm-api", "rapidocr"], known) == ["ocr-vlm-api"]
    assert worker_queues(["ocr-rapidocr"], ["vlm-api", "rapidocr"], known) == [
        "ocr-rapidocr", "ocr-vlm-api"]
    # Told `ocr` (jobs that name no engine): its routed engines' queues too.
    assert worker_queues(["ocr"], ["tesseract", "rapidocr"], known) == [
        "ocr", "ocr-tesseract", "ocr-rapidocr"]
    assert worker_queues(["ocr-interactive"], ["tesseract"], known) == [
        "ocr-interactive", "ocr-tesseract"]
