"""Control tasks: `ocr.cancel` and `ocr.http_callback`.

Run in worker pool children and in the Procfile's control worker (a thread pool that
serves the `ocr-control` queue, so a cancel never waits for a busy pool; batch steps,
its other queue's, always leave it a thread: tasks/queue/batch_steps.py). A
callback's failed POST is retried on the queue's one retry policy
(tasks/queue/retry_policy.py).
"""

from __future__ import annotations

import urllib.error
from typing import Any

from celery import Task, shared_task

from tasks.errors import BadRequest, CallbackNotAllowed, OcrError
from tasks.lifecycle.callbacks import post_json, record_delivery, signing_secrets
from tasks.lifecycle.cancel import cancel_job
from tasks.queue.job_services import JobServices
from tasks.queue.retry_policy import MAX_RETRIES, retries_within, retry_in
from tasks.settings import Settings


@shared_task(name="ocr.cancel", bind=True, throws=(OcrError,))
def cancel(self: Task, job_id: str) -> dict[str, str]:
    """Cancel a job (public: any Celery client sends it with kwargs `job_id`).

    Pages done are kept, running ones are killed; see docs/tasks.md.
    """
    if not isinstance(job_id, str) or not job_id:
        raise BadRequest("`job_id` must be the id of a job")
    services = JobServices.for_app(self.app)

    def stop(ids: list[str]) -> None:
        self.app.control.revoke(ids, terminate=True, signal="SIGKILL")

    status = cancel_job(job_id, services.stores.control, services.join, services.ender,
                        stop)
    return {"job_id": job_id, "status": status}


@shared_task(name="ocr.http_callback", bind=True, max_retries=MAX_RETRIES)
def http_callback(self: Task, url: str, body: dict[str, Any], owner: str = "",
                  job_id: str | None = None) -> int:
    """POST a job's or a batch's summary to the caller's URL; retried with backoff.

    `owner` is the owner named by the record that made the callback (the job's control
    hash, the batch's record): `api:<client>` signs with that client's secret, and
    such a callback is never sent unsigned (`callback_not_allowed` when the client has
    no secret and OCR_CALLBACK_SECRET is empty); any other owner signs with
    OCR_CALLBACK_SECRET when set. `job_id`: the job the delivery is recorded on (none
    for a batch's ending).
    """
    settings: Settings = self.app.ocr_settings
    stores = JobServices.for_app(self.app).stores
    event = body.get("event_id")
    if job_id is not None:
        info = stores.control.info(job_id)
        done = stores.control.callback(info) or {}
        if event and info.get("callback_event") == event and done.get("status") in (
                "sent", "rejected"):
            # This ending was delivered already: its message came back (its
            # acknowledgement lost with a Redis primary, or a worker died after the POST).
            return int(done.get("http_status") or 0)
    # The delivery is recorded on the job (its result's `callback`): sent, refused by
    # the address policy, or failed after the last retry.
    try:
        secrets = signing_secrets(str(owner or ""), stores.webhook_secrets, settings)
        status = post_json(url, body, settings, secrets)
    except CallbackNotAllowed as exc:
        record_delivery(stores.control, job_id, "refused", exc.code,
                        attempts=self.request.retries + 1)
        raise
    except (urllib.error.URLError, OSError) as exc:
        # returns once the retries of OCR_CALLBACK_RETRY_SECONDS are used up
        retry_in(self, exc, retries_within(settings.callback_retry_seconds))
        record_delivery(stores.control, job_id, "failed", "callback_failed",
                        attempts=self.request.retries + 1, reason=type(exc).__name__)
        raise
    record_delivery(stores.control, job_id, "sent" if status < 300 else "rejected",
                    None if status < 300 else "callback_rejected",
                    attempts=self.request.retries + 1, http_status=status,
                    event=event if isinstance(event, str) else "")
    return status
