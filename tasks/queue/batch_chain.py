"""The chain of a batch's driver steps: who starts one, and the step task's name.

Light (no task module, no engine): imported by the HTTP API (a batch created,
cancelled, retried or found without steps) and by the step task itself. Runs in the
`api` process and in workers.
"""

from __future__ import annotations

from typing import Any

from tasks.queue.routing import BATCH_QUEUE, PRIORITIES
from tasks.settings import Settings
from tasks.state.batch_store import BatchStore

STEP_TASK = "ocr.batch_step"


def batch_store(settings: Settings, client: Any) -> BatchStore:
    """The batches' store: kept OCR_BLOB_TTL + OCR_RESULT_TTL after their last step."""
    return BatchStore(client, settings.blob_ttl + settings.result_ttl)


def send_step(app: Any, batch_id: str, chain: str, countdown: float | None = None) -> None:
    """Send one step of the chain `chain` (on the batch queue: the control worker's)."""
    app.send_task(STEP_TASK, kwargs={"batch_id": batch_id, "chain": chain},
                  queue=BATCH_QUEUE, countdown=countdown or None,
                  priority=PRIORITIES["interactive"])


def start_chain(app: Any, store: BatchStore, batch_id: str) -> None:
    """Name a new chain of steps for the batch (any other one stops) and send its first."""
    send_step(app, batch_id, store.new_chain(batch_id))
