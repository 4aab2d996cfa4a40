"""Each process's job services: its Redis stores, its `JobEnder` and its Celery ports.

Runs in the worker parent, pool children and the control worker. `JobServices.for_app()`
gives each process its stores and its `JobEnder`, built once. `CeleryPorts` stores
results in Celery's result backend, sends Flower events as the worker node and writes
the `ocr.job` line through telemetry. `report_progress` writes a
job's progress for clients and for Flower; `page_progress` says how a page task's record
writes it.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from celery import states

from tasks.errors import OcrError
from tasks.lifecycle.job_exit import JobEnder
from tasks.queue import job_events, telemetry
from tasks.queue.result_records import result_record, store_result
from tasks.records.jobs import Broadcast, JobStatus, Outcome, ResultRecord
from tasks.records.status import CeleryState
from tasks.state.connection import connect
from tasks.state.job_control import JobControl
from tasks.state.job_index import JobIndex
from tasks.state.job_state import JobStateReader
from tasks.state.join import DocumentJoin, PageProgress, ProgressWrite
from tasks.state.liveness import WorkerPresence
from tasks.state.reservations import Reservations
from tasks.state.stored_bytes import StoredResults
from tasks.state.stores import BlobStore, OutputStore, ResultCache, Stores
from tasks.state.usage import PageUsage

if TYPE_CHECKING:
    from tasks.queue.ocr_celery import OcrCelery
    from tasks.settings import Settings

log = logging.getLogger(__name__)
PROGRESS_STATE = CeleryState.PROGRESS.value
_node_name: str | None = None


def node_started(name: str) -> None:
    """The worker node's name, for the events the worker parent sends outside a task."""
    global _node_name
    _node_name = name


def send_job_event(app: Any, event: str, job_id: str, **fields: Any) -> None:
    """A task event for the job, sent as the worker node (tasks/queue/job_events.py).

    Flower lists every other sender name as a worker of its own.
    """
    job_events.send_event(app, _sender(app), event, job_id, **fields)


def _sender(app: Any) -> str | None:
    """The worker node's name: its running task's, else the node's (the parent)."""
    task = app.current_worker_task
    return task.request.hostname if task is not None else _node_name


def _succeeded(outcome: Outcome) -> dict[str, Any]:
    """The fields of an ended job's `task-succeeded` event (Flower's result and runtime)."""
    return {"result": outcome.status.value, "runtime": outcome.seconds}


def report_progress(app: Any, job_id: str, done: int, total: int) -> None:
    """Progress in the result backend (for clients) and as an event (for Flower).

    Written only while the job has not ended, in one atomic step: a page finishing
    after a cancel must not turn the job's final state back into PROGRESS. A one-page
    job has none: its ending follows its page at once.
    """
    if total <= 1:
        return
    backend = app.backend
    control = JobServices.for_app(app).stores.control
    if not control.store_progress(job_id, backend.get_key_for_task(job_id),
                                  _progress_text(app, job_id, done, total),
                                  int(backend.expires), total):
        return
    tell_progress(app, job_id, done, total)


def tell_progress(app: Any, job_id: str, done: int, total: int) -> None:
    """The job's progress as a task event, for Flower."""
    # `result` is a field Flower shows on the task page; the final result replaces it.
    send_job_event(app, "task-progress", job_id, result=f"{done}/{total} pages",
                   done=done, total=total)


def page_progress(app: Any, job_id: str, total: int) -> PageProgress:
    """How a page task reports the job's progress: written with its pages' record.

    The record's `done` count is the pages the recording script finds in (a mark here,
    cut out), so progress costs no read of its own; none for a one-page document.
    """
    tell = functools.partial(tell_progress, app, job_id)
    if total <= 1:
        return PageProgress(None, tell)
    head, tail = _progress_text(app, job_id, _DONE_MARK, total).split(str(_DONE_MARK), 1)
    backend = app.backend
    return PageProgress(ProgressWrite(backend.get_key_for_task(job_id), head, tail,
                                      int(backend.expires)), tell)


# The `done` a page task's progress record is encoded with, then cut out.
_DONE_MARK = 918273645546372819


def _progress_text(app: Any, job_id: str, done: int, total: int) -> str:
    """The job's PROGRESS record as Celery's result backend stores it."""
    backend = app.backend
    record = backend._get_result_meta({"done": done, "total": total}, PROGRESS_STATE,
                                      None, None)
    record["task_id"] = job_id
    text = backend.encode(record)
    return text.decode() if isinstance(text, bytes) else str(text)


class CeleryPorts:
    """`EndingPorts` on Celery: result backend, events, the `ocr.job` line."""

    def __init__(self, app: OcrCelery, control: JobControl,
                 stored: StoredResults | None = None) -> None:
        self._app = app
        self._control = control
        self._stored = stored

    def result_record(self, outcome: Outcome) -> ResultRecord | None:
        if outcome.status in (JobStatus.CANCELLED, JobStatus.FAILURE):
            return None  # stored by `publish`, with the writes they need beside
        return result_record(self._app, outcome.job_id, outcome.stored(), states.SUCCESS)

    def publish(self, outcome: Outcome) -> None:
        app, job_id = self._app, outcome.job_id
        if outcome.status is JobStatus.CANCELLED:
            result = outcome.public()
            self._control.store_cancelled(job_id, result)
            app.backend.mark_as_revoked(job_id, "cancelled")
            # Flower ends the job as every other caller does: CANCELLED (a task-*
            # event's name is its state there), with the pages it kept.
            kept = len(result.get("pages", []))
            send_job_event(app, "task-cancelled", job_id,
                           result=f"CANCELLED: {kept} pages kept")
        elif outcome.status is JobStatus.FAILURE:
            error = outcome.error or OcrError()
            if outcome.client:  # a failure's stored form (an exception) has no field for it
                self._control.remember(job_id, client=outcome.client)
            store_result(app, job_id, error, states.FAILURE)
            send_job_event(app, "task-failed", job_id, exception=str(error))
        else:
            store_result(app, job_id, outcome.stored(), states.SUCCESS)
            self.tell(outcome)

    def tell(self, outcome: Outcome) -> None:
        # always: the worker's own task events are on only while Flower asks for them
        send_job_event(self._app, "task-succeeded", outcome.job_id, **_succeeded(outcome))

    def told_by_claim(self, outcome: Outcome) -> Broadcast | None:
        if not self._one_server:
            return None
        return job_events.event_later(self._app, _sender(self._app), "task-succeeded",
                                      outcome.job_id, **_succeeded(outcome))

    @functools.cached_property
    def _one_server(self) -> bool:
        """Whether the broker's PUB/SUB is the state store's: one server, one user."""
        settings = self._app.ocr_settings
        broker = settings.broker_target
        return broker is not None and broker.same_server(settings.redis_target)

    def waits_for_replicas(self) -> bool:
        return self._app.ocr_settings.redis_target.min_replicas > 0

    def keep(self, outcome: Outcome) -> None:
        target = self._app.ocr_settings.redis_target
        if not self._control.keep(outcome.job_id, target, ending=True):
            log.error("job %s: its ending reached no Redis replica within %g s; it goes "
                      "on without one (a failover now could run it again)",
                      outcome.job_id, target.replica_timeout)

    def record(self, outcome: Outcome) -> None:
        try:
            accepted = self._control.accepted(outcome.job_id)  # its latency counts from there
        except OcrError:  # unreachable: from the job's start instead
            accepted = None
        telemetry.job_ended(outcome, accepted)
        if outcome.client and self._stored is not None:
            try:  # what its result keeps in Redis, in the client's bytes quota
                self._stored.count(outcome.client, outcome.job_id, outcome.source)
            except OcrError as exc:  # unreachable: its result goes uncounted
                log.warning("job %s: its stored result not counted: %s", outcome.job_id,
                            exc.message)


@dataclass
class JobServices:
    """The Redis stores, the fan-out join, the job ender, the job lists, the workers' presence."""

    stores: Stores
    join: DocumentJoin
    ender: JobEnder
    index: JobIndex
    usage: PageUsage  # pages read per client, and their caps
    presence: WorkerPresence  # the queues live workers consume (an escalation's engine)
    reservations: Reservations  # a job's page hold, settled once its count is known

    @classmethod
    def for_app(cls, app: OcrCelery) -> JobServices:
        made = getattr(app, "_job_services", None)
        if made is None:
            settings: Settings = app.ocr_settings
            client = connect(settings.redis_target)
            control = JobControl(client, settings.result_ttl)
            stores = Stores(BlobStore(client, settings.blob_ttl),
                            ResultCache(client, settings.result_ttl),
                            OutputStore(client, settings.result_ttl), control)
            join = DocumentJoin(client, settings.blob_ttl)
            reservations = Reservations(client, settings.blob_ttl + settings.result_ttl,
                                        JobStateReader(client, app.backend).ended)
            ports = CeleryPorts(app, control, StoredResults(client, settings.result_ttl))
            made = cls(stores, join, JobEnder(control, join, ports),
                       JobIndex(client, settings.blob_ttl + settings.result_ttl,
                                settings.jobs_listed), reservations.usage,
                       WorkerPresence(client), reservations)
            app._job_services = made
        return made
