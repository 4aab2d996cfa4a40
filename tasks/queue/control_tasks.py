"""Control tasks: `ocr.cancel` and `ocr.http_callback`.

Run in worker pool children and in the Procfile's control worker (a thread pool that
serves the `ocr-control` queue, so a cancel never waits for a busy pool; batch steps,
its other queue's, always leave it a thread: tasks/queue/batch_steps.py).
`ocr.http_callback` only moves a POST sent as a message into the callback outbox.
"""

from __future__ import annotations

import time
from typing import Any

from celery import Task, shared_task

from tasks.errors import BadRequest, OcrError
from tasks.lifecycle.cancel import cancel_job
from tasks.queue.job_services import JobServices
from tasks.state.callback_outbox import HTTP, Delivery


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


@shared_task(name="ocr.http_callback", bind=True)
def http_callback(self: Task, url: str, body: dict[str, Any], owner: str = "",
                  job_id: str | None = None) -> None:
    """A POST sent as a message (by a release before the callback outbox): into the outbox.

    The control worker's sender POSTs it (tasks/queue/callback_sender.py). `owner`
    signs it; `job_id`: the job its answer is recorded on (none for a batch's ending).
    """
    event = body.get("event_id")
    name = event if isinstance(event, str) and event else str(self.request.id)
    JobServices.for_app(self.app).stores.control.put_callbacks([Delivery(
        f"{name}.{HTTP}", HTTP, url, body, owner=str(owner or ""), job_id=job_id or "",
        client=str(owner or "").removeprefix("api:"), first=time.time())])
