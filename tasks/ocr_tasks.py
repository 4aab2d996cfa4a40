"""Public Celery tasks. Thin: decode arguments, call domain code, decide retries.

Task bodies run in worker pool children.
"""

from __future__ import annotations

import functools
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import Task, shared_task

from tasks import runtime
from tasks.errors import OcrError, Timeout, TransientError
from tasks.jobs import process_job
from tasks.storage import BlobStore, ResultCache, connect

PROGRESS_STATE = "PROGRESS"


@functools.cache
def _stores(redis_url: str, blob_ttl: int, result_ttl: int) -> tuple[BlobStore, ResultCache]:
    client = connect(redis_url)
    return BlobStore(client, blob_ttl), ResultCache(client, result_ttl)


def _report_progress(task: Task, done: int, total: int) -> None:
    """Progress in the result backend (for clients) and as an event (for Flower)."""
    meta = {"done": done, "total": total}
    task.update_state(state=PROGRESS_STATE, meta=meta)
    task.send_event("task-progress", **meta)


@shared_task(name="ocr.document", bind=True, throws=(OcrError,),
             autoretry_for=(TransientError,), retry_backoff=2, retry_backoff_max=60,
             retry_jitter=True, max_retries=5)
def document(self: Task, **kwargs: Any) -> dict[str, Any]:
    """OCR one image or PDF; see docs/tasks.md for kwargs and the result schema."""
    settings = self.app.ocr_settings
    blobs, cache = _stores(settings.redis_url, settings.blob_ttl, settings.result_ttl)
    registry = runtime.current(settings)
    try:
        result = process_job(kwargs, settings, registry, blobs, cache,
                             progress=functools.partial(_report_progress, self))
    except TransientError:
        raise  # retried by autoretry_for; the blob stays for the retry
    except SoftTimeLimitExceeded:
        _drop_blob(blobs, kwargs)
        raise Timeout(f"the job ran past its soft time limit of "
                      f"{settings.soft_time_limit} s") from None
    except BaseException:
        _drop_blob(blobs, kwargs)
        raise
    _drop_blob(blobs, kwargs)
    return {"id": self.request.id, **result}


def _drop_blob(blobs: BlobStore, kwargs: dict[str, Any]) -> None:
    key = kwargs.get("blob")
    if isinstance(key, str) and key.startswith("ocr:blob:"):
        blobs.delete(key)
