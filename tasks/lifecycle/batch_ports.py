"""What a batch's driver needs from the layers above it: places, the gate, the queue.

The contract of tasks/lifecycle/batches.py's `BatchDriver`. A worker's ports are
tasks/batch_worker.py's (`CeleryBatchPorts`); submit.py's for a local folder are
tasks/cli/local_batch.py's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from tasks.lifecycle.batch_sources import Source, Target
    from tasks.lifecycle.fetcher import Fetcher
    from tasks.records.batches import BatchRecord
    from tasks.records.jobs import Reservation
    from tasks.records.request import JobRequest


class BatchPorts(Protocol):
    """What a step needs from the layers above: places, the gate, the queue."""

    def fetcher(self, record: BatchRecord) -> Fetcher:
        """The batch's client's fetcher: every read of the batch goes through it."""

    def target(self, record: BatchRecord) -> Target:
        """Where the batch writes (its `target`, checked)."""

    def source(self, record: BatchRecord, target: Target) -> Source:
        """What the batch reads (its `source`, checked)."""

    def admit(self, record: BatchRecord, request: JobRequest) -> Reservation:
        """The gate for one document's job: its reservation, or its error.

        QuotaExceeded: its client's jobs in flight are full (wait).
        """

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation whose job was not sent (none once it was)."""

    def send(self, record: BatchRecord, request: JobRequest,
             reservation: Reservation | None = None, replacing: str = "") -> str:
        """Send one document's job (the batch's client, priority); its id.

        `reservation`: the gate's, committed by the send. None: the job takes
        `replacing`'s place in flight (never refused).
        """

    def endings(self, record: BatchRecord, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Those of these jobs that ended, in order, each with its public result.

        Each one's output is under the target by then.
        """

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel these jobs (queued ones never start, running ones stop)."""

    def notify(self, record: BatchRecord, body: dict[str, Any]) -> None:
        """POST the batch's summary to its `callback_url` (when it names one)."""

    def stalled(self, job_ids: list[str]) -> list[str]:
        """Which of these unended jobs had their ending claimed long ago, never finished."""

    def forget(self, job_ids: list[str]) -> None:
        """Let the Redis records of these settled jobs go soon (their result, its output)."""
