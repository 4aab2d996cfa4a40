"""A batch's driver steps (`ocr.batch_step`): their chain, and the threads they may hold.

Light (no task module, no engine). The chain is used by the HTTP API (a batch created,
cancelled, retried or found without steps) and by the step task itself
(tasks/batch_worker.py). Runs in the `api` process and in workers.

- The chain: each chain of steps is named in the batch's record. Starting a new one
  stops any other; a step sends the next one.
- The slots: a step reads the batch's source and HEADs its documents, as slowly as the
  client's origin answers. It runs in the control worker (a thread pool), beside
  `ocr.cancel` and `ocr.http_callback`.
  - A client's steps hold at most OCR_BATCH_THREADS_PER_CLIENT threads at once.
  - The steps of every client together leave one thread of the pool to the control
    tasks (a pool of one thread keeps none).
  - A step that finds no room reads nothing and is sent again later.
  - Each process counts its own threads: a count per pool, not across the fleet.
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
