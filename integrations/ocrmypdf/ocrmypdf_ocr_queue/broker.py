"""The service's broker (`redis://`, `rediss://`, `sentinel://`) from OCRmyPDF, via its client.

Runs in OCRmyPDF's processes (`check` in the main process, `read` in page workers).
For hosts inside the cluster: it imports the service's Python client
(`tasks.client.OcrClient`), so the service's checkout must be importable (on
PYTHONPATH) with its client's packages (`pip install "integrations/ocrmypdf[redis]"`:
celery[redis]); nothing else of the service (no engine, PyMuPDF or Pillow import).
The URL is read as the service reads REDIS_URL (behind Sentinel, with the environment's
OCR_REDIS_SENTINEL_MASTER and OCR_REDIS_* settings), so a page follows a failover as
the service's own clients do.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ocrmypdf_ocr_queue.errors import PageFailed, Refused, Unreachable
from ocrmypdf_ocr_queue.pages import PageJob, PageRead

# Waiting past the job's own deadline (the service ends it there) by this much means
# the service is gone.
GRACE = 60.0


class Broker:
    """The service's Redis at `url`, through `tasks.client.OcrClient`."""

    def __init__(self, url: str) -> None:
        try:
            from tasks.client import CONNECTION_ERRORS, OcrClient
            from tasks.errors import OcrError
            from tasks.settings import Settings, SettingsError
        except ImportError as exc:
            raise Unreachable(
                f"--ocr-queue-url {url.split('@')[-1]} is the broker, which needs the OCR "
                f"service's client: put its checkout on PYTHONPATH and pip install "
                f"'ocrmypdf-ocr-queue[redis]' ({exc})") from None
        try:
            self._client = OcrClient(Settings.from_env({**os.environ, "REDIS_URL": url}))
        except SettingsError as exc:
            raise Refused(str(exc)) from None
        self._connection_errors: tuple[type[BaseException], ...] = CONNECTION_ERRORS
        self._ocr_error = OcrError

    def check(self, engine: str | None) -> None:
        """Raise unless Redis answers and a live worker consumes the job's queue."""
        from tasks.queue.routing import job_queue

        queue = job_queue(engine)
        try:
            self._client.check_service()
            served = any(queue in queues for queues in self._client.live_queues().values())
        except self._connection_errors as exc:
            raise Unreachable(self._client.unreachable_message(exc)) from None
        except self._ocr_error as exc:
            raise Unreachable(exc.message) from None
        if not served:
            raise Unreachable(f"no live worker consumes queue {queue!r} of the OCR "
                              "service (start one: `make run`)")

    def read(self, image: Path, job: PageJob) -> PageRead:
        """Send the page image as one job, wait for its end, return what it read."""
        try:
            job_id = self._client.submit(image.read_bytes(), filename=image.name,
                                         deadline=job.deadline, output=job.output,
                                         lang=job.lang, engine=job.engine)
            result = self._client.wait([job_id], timeout=job.deadline + GRACE)[job_id]
            hocr = self._client.fetch_output(result) if job.output == "hocr" else None
        except self._connection_errors as exc:
            raise Unreachable(self._client.unreachable_message(exc)) from None
        except self._ocr_error as exc:
            raise PageFailed(f"{exc.code}: {exc.message}") from None
        if result.get("status") != "SUCCESS":
            raise PageFailed(_error_line(result))
        if job.output == "hocr" and hocr is None:
            raise PageFailed(f"job {job_id} stored no hOCR (expired?)")
        pages: list[dict[str, Any]] = result.get("pages") or [{}]
        return PageRead(text=str(result.get("text", "")), hocr=hocr,
                        rotation=int(pages[0].get("rotation") or 0))

    def close(self) -> None:
        self._client.close()


def _error_line(result: dict[str, Any]) -> str:
    error = result.get("error") or {}
    if error.get("code"):
        return f"{error['code']}: {error.get('message', '')}".rstrip(": ")
    return f"the job ended {result.get('status')}"
