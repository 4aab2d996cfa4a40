"""A batch's driver: one step collects the documents that ended and sends the next ones.

One driver for every batch: the service's (a worker child takes the batch's
`ocr.batch_step`, tasks/batch_worker.py sends the next step when this one returns a
delay) and a local folder's (submit.py steps it in its own process, tasks/cli/
batches.py). No Celery here: where the batch reads and writes, the gate, sending jobs,
reading their ends and cancelling them go through `BatchPorts`.

A step, under the batch's lock: the lines of the documents in flight whose jobs ended
are written under the target as one part (tasks/lifecycle/batch_manifest.py), then
those documents leave the flight and are counted; then documents are read from the source's
cursor and sent as jobs until OCR_BATCH_WINDOW are in flight. Each document is
admitted by the gate as it is sent (the client's prefixes and OCR_ALLOWED_URLS, its
options and engine, page caps, jobs in flight), and every read of it (a manifest
document's HEAD, every redirect hop) goes through the batch's client's fetcher
(`BatchPorts.fetcher`): one refused gets a manifest line with the refusal's code and
the batch goes on; a manifest line naming a document and options an earlier line of
the batch named is not read again, its line saying `duplicate`; one over the
client's jobs in flight waits, the cursor before it, for a later step. A document
whose manifest line already shows its source version and options is skipped (unless
the batch overwrites); one skipped whose line shows it failed counts as failed. The
lines already under the target are read back once, as a run over a target that holds
some starts (`ManifestIndex`, kept by the driver for that run); a retry reads again the
documents whose latest line failed. The cursor
moves past each document as its job is sent. When the listing is done and nothing is
in flight, `manifest.jsonl` is composed and the batch ends as the collection stands
(`BatchRecord.ending`) or CANCELLED. A crash anywhere re-reads at most the documents
in flight: the cursor and the flight are in Redis, what ended is in the target.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tasks.errors import InputTooLarge, OcrError, QuotaExceeded
from tasks.lifecycle.batch_lines import (
    FAILED,
    document_options,
    duplicate_line,
    failed_line,
    line_counts,
    manifest_line,
    merged,
)
from tasks.lifecycle.batch_manifest import (
    Indexes,
    ManifestIndex,
    compose_from_parts,
    has_lines,
    write_part,
)
from tasks.lifecycle.batch_sources import (
    Document,
    Source,
    Target,
    options_digest,
    output_name,
    same_read,
)
from tasks.lifecycle.url_policy import is_url
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.formats import FORMATS
from tasks.records.request import JobRequest
from tasks.records.status import JobStatus
from tasks.state.batch_store import BatchStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.lifecycle.batch_ports import BatchPorts
    from tasks.records.jobs import Reservation
    from tasks.settings import Settings

log = logging.getLogger(__name__)
# A step's lock: kept alive page by page while the step runs, so a step whose process
# died holds it this long at most.
LOCK_SECONDS = 30.0
STALL_CHECK_SECONDS = 15.0  # a batch's waiting jobs asked whether their ending died
CHECKED_BATCHES = 1024    # batches whose last such question one driver remembers
PAGE = 100                # documents asked of the source at a time
PAGES_A_STEP = 50         # source pages one step reads at most (skipping a done listing)
SENDING_SECONDS = 2.0     # one step sends for this long at most; the next goes on
SENT, PASSED, WAIT = 1, 0, -1  # what became of one document


class BatchDriver:
    """Runs the steps of batches (one per process; thread-safe as its store is)."""

    def __init__(self, store: BatchStore, ports: BatchPorts, settings: Settings) -> None:
        self.store = store
        self.ports = ports
        self.settings = settings
        self.indexes = Indexes()
        self._checked: dict[str, float] = {}  # batch id -> when `_stalled` last asked
        self._checking = threading.Lock()

    def step(self, batch_id: str, chain: str) -> float | None:
        """One step; the seconds until the next one.

        None when the batch ended, or when this chain of steps is not the batch's.
        """
        record = self.store.get(batch_id)
        if not record.driven_by(chain):
            return None
        holder = uuid.uuid4().hex
        if not self.store.lock(batch_id, holder, LOCK_SECONDS):
            return self.settings.batch_step_seconds  # another step is running: later
        try:
            return self._step(record,
                              lambda: self.store.extend(batch_id, holder, LOCK_SECONDS))
        finally:
            self.store.unlock(batch_id, holder)

    def _step(self, record: BatchRecord, alive: Callable[[], object]) -> float | None:
        batch_id = record.id
        self.store.touch(batch_id)
        target = self.ports.target(record)
        self._collect(record, target)
        if record.cancel:
            flight = self.store.flight(batch_id)
            if flight and not record.cancel_sent:
                self.ports.cancel(list(flight))
                self.store.update(batch_id, cancel_sent=True)
            if not flight:
                return self._finish(batch_id, target, BatchState.CANCELLED, alive)
            return self.settings.batch_step_seconds
        if not record.listed_all:
            self._fill(record, target, alive)
        record = self.store.get(batch_id)  # as the endings and the listing left it
        if record.listed_all and self.store.in_flight(batch_id) == 0:
            return self._finish(batch_id, target, record.ending(), alive)
        return self.settings.batch_step_seconds

    # --- endings -----------------------------------------------------------------------

    def _collect(self, record: BatchRecord, target: Target) -> int:
        """Write the manifest line of each document whose job ended; count it; how many."""
        batch_id = record.id
        flight = self.store.flight(batch_id)
        if not flight:
            return 0
        results = self.ports.endings(record, list(flight))  # an error ends the step
        ended = list(results)
        waiting = [job_id for job_id in flight if job_id not in results]
        stalled = self._stalled(batch_id, waiting)
        if stalled:
            self._resend(record, flight, stalled)
        if not ended:
            return 0
        lines: dict[str, dict[str, Any] | None] = {}
        for job_id, result in results.items():
            document = Document.from_json(flight[job_id])
            # a cancelled document gets no line: a later batch reads it
            lines[job_id] = None if result.get("status") == JobStatus.CANCELLED else \
                manifest_line(record, document, job_id, result,
                              document_options(record, document))
        # The part before the counts: a step that dies between them is done again.
        write_part(target, [line for line in lines.values() if line is not None])
        self.store.settle(batch_id, {job_id: line_counts(line) if line else {}
                                     for job_id, line in lines.items()})
        # What each job left in Redis is in the target now: Redis keeps the window's.
        self.ports.forget(ended)
        return len(ended)

    def _stalled(self, batch_id: str, waiting: list[str]) -> list[str]:
        """Of the jobs waiting, those whose ending died with its host.

        Asked of a batch at most every STALL_CHECK_SECONDS by this driver: an ending is
        taken for dead only after minutes, and the question costs two reads a job.
        """
        now = time.monotonic()
        with self._checking:
            last = self._checked.get(batch_id)
            if not waiting or (last is not None and now - last < STALL_CHECK_SECONDS):
                return []
            self._checked.pop(batch_id, None)  # the latest asked last
            self._checked[batch_id] = now
            while len(self._checked) > CHECKED_BATCHES:
                self._checked.pop(next(iter(self._checked)))
        return self.ports.stalled(waiting)

    # --- the listing -------------------------------------------------------------------

    def _fill(self, record: BatchRecord, target: Target, alive: Callable[[], object]) -> None:
        """Send documents from the cursor until the window is full or the listing ends."""
        batch_id = record.id
        room = self.settings.batch_window - self.store.in_flight(batch_id)
        if record.fresh is None:  # a target without manifest lines: nothing to compare
            record = record.with_(fresh=not has_lines(target))
            self.store.update(batch_id, fresh=record.fresh)
        retrying = record.phase == "retry"
        index = None if not retrying and (record.overwrite or record.fresh) else \
            self.indexes.of(batch_id, (record.chain, record.phase),
                            lambda: ManifestIndex.read(target, alive))
        source: Source = index if retrying and index is not None else \
            self.ports.source(record, target)
        cursor = record.cursor
        until = time.monotonic() + SENDING_SECONDS
        for _ in range(PAGES_A_STEP):
            if room <= 0:
                return
            alive()
            documents, done = source.page(cursor, min(room, PAGE) if not retrying else PAGE)
            for document, after in documents:
                if room <= 0 or time.monotonic() > until:
                    return
                if not document.url and not document.refused:
                    cursor = after
                    self.store.passed(batch_id, cursor)
                    continue
                outcome = self._one(record, target, document, after,
                                    None if retrying else index, retrying)
                if outcome == WAIT:
                    return  # the client's jobs in flight are full: the cursor stays
                cursor = after
                room -= outcome
            if done:
                self.store.update(batch_id, listed_all=True)
                return

    def _one(self, record: BatchRecord, target: Target, document: Document, cursor: str,
             index: ManifestIndex | None, retrying: bool) -> int:
        """Skip, refuse, send or hold back one document: SENT, PASSED or WAIT.

        `index`: the lines under the target, when a matching one skips the document.
        """
        batch_id = record.id
        options = document_options(record, document)
        counted = {"failed": -1} if retrying else {"listed": 1}
        if document.refused:
            return self._refuse(record, target, document, options, cursor, counted,
                                document.refused)
        if document.at and not retrying:  # a manifest's line: read once per batch
            first = self.store.first_seen(batch_id, f"{document.url}\0"
                                          f"{options_digest(options)}", document.at)
            if first != document.at:
                # its line in manifest.jsonl only: the first line's object stays
                write_part(target, [duplicate_line(record, document, options, first)])
                self.store.passed(batch_id, cursor, skipped=1, **counted)
                return PASSED
        try:  # the gate first: a refused document's object is never asked
            request = self._request(record, document, options)
            reservation = self.ports.admit(record, request)
        except QuotaExceeded:
            return WAIT
        except OcrError as exc:
            if exc.retryable:
                raise  # Redis or a store briefly away: the step is tried again
            return self._refuse(record, target, document, options, cursor, counted,
                                exc.code)
        try:
            return self._send_admitted(record, target, document, options, cursor, index,
                                       counted, request, reservation)
        finally:
            self.ports.release(reservation)  # none once its job was sent

    def _send_admitted(self, record: BatchRecord, target: Target, document: Document,
                       options: dict[str, Any], cursor: str, index: ManifestIndex | None,
                       counted: dict[str, int], request: JobRequest,
                       reservation: Reservation) -> int:
        """Refuse, skip or send an admitted document: SENT or PASSED."""
        size = document.version.get("size")
        if isinstance(size, int) and size > self.settings.max_input_bytes:
            # Its job would read it with no HEAD (its ETag pinned): refused here, unread.
            return self._refuse(record, target, document, options, cursor, counted,
                                InputTooLarge.code)
        pin: dict[str, Any] = {}
        if document.url.startswith("s3://") and document.version.get("etag"):
            pin = {"url_etag": document.version["etag"]}
        elif is_url(document.url):  # a manifest's document: its version from a HEAD
            try:
                info = self.ports.fetcher(record).locate(document.url).info
            except OcrError as exc:
                return self._refuse(record, target, document, options, cursor, counted,
                                    exc.code)
            version = {"version_id": info.version} if info.version else \
                {"etag": info.etag, "size": info.size}
            document = replace(document, version=version)
            pin = {"url_version": info.version} if info.version else \
                {"url_etag": info.etag} if info.etag else {}
        if index is not None:
            line = index.line(document.name)
            failed = line is not None and line.get("status") in FAILED
            if same_read(line, document, options_digest(options)) \
                    and not (failed and record.retry_failed):
                self.store.passed(record.id, cursor, skipped=1,
                                  **({"skipped_failed": 1} if failed else {}), **counted)
                return PASSED
        job_id = self.ports.send(record, replace(request, **pin), reservation)
        self.store.sent(record.id, job_id, document.to_json(), cursor, **counted)
        return SENT

    def _refuse(self, record: BatchRecord, target: Target, document: Document,
                options: dict[str, Any], cursor: str, counted: dict[str, int],
                code: str) -> int:
        """A document refused before any job read it: its line says why; counted."""
        line = failed_line(record, document, options, code)
        write_part(target, [line])
        self.store.passed(record.id, cursor, **merged(counted, line_counts(line)))
        return PASSED

    def _request(self, record: BatchRecord, document: Document, options: dict[str, Any],
                 pin: dict[str, Any] | None = None) -> JobRequest:
        """The job's request: the document, its options, where its output goes.

        `pin`: the version of the document it reads. BadRequest: options it cannot take.
        """
        output = str(options.get("output", "text"))
        fixed = dict(pin or {})
        if record.document_callbacks and record.callback_url:
            fixed["callback_url"] = record.callback_url  # each job's summary
        suffix_of = output if output in FORMATS else "text"  # the gate refuses it
        # A local folder's document is a file here; any other batch's names a URL only.
        source = {"path": document.url} if record.local else {"url": document.url}
        return JobRequest.for_door({
            **options, **fixed, **source, "filename": document.name.rsplit("/", 1)[-1],
            "result_url": f"{record.target}{output_name(document.name, suffix_of)}"})

    def _resend(self, record: BatchRecord, flight: dict[str, Any],
                stalled: list[str]) -> None:
        """Send again the documents whose job's ending died with its host.

        Such a job's end claim names a process gone for good, so no delivery of its
        message ends it: the document is read again under a new job (at most the window).
        """
        for job_id in stalled:
            document = Document.from_json(flight[job_id])
            pin = {"url_etag": document.version["etag"]} if document.version.get("etag") \
                else {"url_version": document.version["version_id"]} \
                if document.version.get("version_id") else {}
            request = self._request(record, document, document_options(record, document), pin)
            new_id = self.ports.send(record, request, replacing=job_id)
            log.warning("batch %s: job %s's ending died with its host; %s sent again as %s",
                        record.id, job_id, document.name, new_id)
            self.store.sent(record.id, new_id, document.to_json(), record.cursor)
            self.store.settle(record.id, {job_id: {}})

    # --- the end -----------------------------------------------------------------------

    def fail(self, batch_id: str, error: OcrError) -> None:
        """End a batch whose source or target is refused for good (FAILURE, its error)."""
        self.store.update(batch_id, error=error.to_dict())
        self.store.end(batch_id, BatchState.FAILURE)
        self._forget(batch_id)
        record = self.store.get(batch_id)
        log.warning("batch %s failed: %s", batch_id, error.code)
        if record.callback_url:
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": BatchState.FAILURE.value,
                                       "error": error.to_dict(), **record.counts()})

    def _forget(self, batch_id: str) -> None:
        """What this driver held of an ended batch: its index, its last stall question."""
        self.indexes.drop(batch_id)
        with self._checking:
            self._checked.pop(batch_id, None)

    def _finish(self, batch_id: str, target: Target, state: BatchState,
                alive: Callable[[], object]) -> float | None:
        lines = compose_from_parts(target, alive)
        self.store.end(batch_id, state)
        self._forget(batch_id)
        record = self.store.get(batch_id)
        log.info("batch %s ended %s (%d manifest lines)", batch_id, state, lines)
        if record.callback_url:
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": state.value, **record.counts()})
        return None

