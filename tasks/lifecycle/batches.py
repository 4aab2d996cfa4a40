"""A batch's driver: one step collects the documents that ended and sends the next ones.

One driver for every batch: the service's (a worker child takes the batch's
`ocr.batch_step`, tasks/batch_worker.py sends the next step when this one returns a
delay) and a local folder's (submit.py steps it in its own process, tasks/cli/
batches.py). No Celery here: where the batch reads and writes, the gate, sending jobs,
reading their ends and cancelling them go through `BatchPorts`.

A step, under the batch's lock: each document in flight whose job ended gets its
manifest line written under the target (`<target>.manifest/<sha256 of name>.json`),
then leaves the flight and is counted; then documents are read from the source's
cursor and sent as jobs until OCR_BATCH_WINDOW are in flight. Each document is
admitted by the gate as it is sent (the client's prefixes and OCR_ALLOWED_URLS, its
options and engine, page caps, jobs in flight): one refused gets a manifest line
with the refusal's code and the batch goes on; one over the client's jobs in flight
waits, the cursor before it, for a later step. A document whose manifest line
already shows its source version and options is skipped (unless the batch
overwrites); one skipped whose line shows it failed counts as failed. The cursor
moves past each document as its job is sent. When the listing is done and nothing is
in flight, `manifest.jsonl` is composed and the batch ends as the collection stands
(`BatchRecord.ending`) or CANCELLED. A crash anywhere re-reads at most the documents
in flight: the cursor and the flight are in Redis, what ended is in the target.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from tasks.errors import OcrError, QuotaExceeded
from tasks.lifecycle.batch_lines import (
    FAILED,
    document_options,
    failed_line,
    line_counts,
    manifest_line,
    merged,
)
from tasks.lifecycle.batch_sources import (
    MANIFEST_DIR,
    Document,
    Source,
    Target,
    compose_from_parts,
    manifest_name,
    options_digest,
    output_name,
    read_line,
    read_line_object,
    same_read,
    write_part,
)
from tasks.lifecycle.url_inputs import locate
from tasks.lifecycle.url_policy import is_url
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.formats import FORMATS
from tasks.records.status import JobStatus
from tasks.state.batch_store import BatchStore

if TYPE_CHECKING:
    from collections.abc import Callable

    from tasks.settings import Settings

log = logging.getLogger(__name__)
# A step's lock: kept alive page by page while the step runs, so a step whose process
# died holds it this long at most.
LOCK_SECONDS = 30.0
WRITERS = 8               # documents' endings settled at once (one PUT each)
PAGE = 100                # documents asked of the source at a time
PAGES_A_STEP = 50         # source pages one step reads at most (skipping a done listing)
SENDING_SECONDS = 2.0     # one step sends for this long at most; the next goes on
SENT, PASSED, WAIT = 1, 0, -1  # what became of one document


class BatchPorts(Protocol):
    """What a step needs from the layers above: places, the gate, the queue."""

    def target(self, record: BatchRecord) -> Target:
        """Where the batch writes (its `target`, checked)."""

    def source(self, record: BatchRecord, target: Target) -> Source:
        """What the batch reads (its `source`, checked)."""

    def admit(self, record: BatchRecord, kwargs: dict[str, Any]) -> None:
        """The gate for one document's job: its error, or None (QuotaExceeded: wait)."""

    def send(self, record: BatchRecord, kwargs: dict[str, Any]) -> str:
        """Send one document's job (the batch's client, priority); its id."""

    def ended(self, job_ids: list[str]) -> list[str]:
        """Which of these jobs ended."""

    def result(self, record: BatchRecord, job_id: str) -> dict[str, Any]:
        """An ended job's public result (its output written under the target)."""

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel these jobs (queued ones never start, running ones stop)."""

    def notify(self, record: BatchRecord, body: dict[str, Any]) -> None:
        """POST the batch's summary to its `callback_url` (when it names one)."""

    def stalled(self, job_ids: list[str]) -> list[str]:
        """Which of these unended jobs had their ending claimed long ago, never finished."""

    def forget(self, job_ids: list[str]) -> None:
        """Let the Redis records of these settled jobs go soon (their result, its output)."""


class BatchDriver:
    """Runs the steps of batches (one per process; thread-safe as its store is)."""

    def __init__(self, store: BatchStore, ports: BatchPorts, settings: Settings) -> None:
        self.store = store
        self.ports = ports
        self.settings = settings

    def step(self, batch_id: str, chain: str) -> float | None:
        """One step; the seconds until the next one.

        None when the batch ended, or when this chain of steps is not the batch's.
        """
        record = self.store.get(batch_id)
        if not record.exists or record.state.final or record.chain != chain:
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
        ended = self.ports.ended(list(flight))
        waiting = [job_id for job_id in flight if job_id not in set(ended)]
        stalled = self.ports.stalled(waiting) if waiting else []
        if stalled:
            self._resend(record, flight, stalled)
        if not ended:
            return 0

        def line_of(job_id: str) -> dict[str, Any] | None:
            document = Document.from_json(flight[job_id])
            result = self.ports.result(record, job_id)
            if result.get("status") == JobStatus.CANCELLED:
                return None  # no line: a later batch reads it
            line = manifest_line(record, document, job_id, result,
                                 document_options(record, document))
            self._write_line(target, document, line)
            return line

        with ThreadPoolExecutor(WRITERS) as pool:  # each ending's line: one PUT
            lines = list(pool.map(line_of, ended))  # an error ends the step: retried
        # The part before the counts: a step that dies between them is done again.
        write_part(target, [line for line in lines if line is not None])
        for job_id, line in zip(ended, lines, strict=True):
            self.store.settled(batch_id, job_id, **(line_counts(line) if line else {}))
        # What each job left in Redis is in the target now: Redis keeps the window's.
        self.ports.forget(ended)
        return len(ended)

    def _write_line(self, target: Target, document: Document, line: dict[str, Any]) -> None:
        target.put(manifest_name(document.name), json.dumps(line, sort_keys=True).encode(),
                   "application/json")

    # --- the listing -------------------------------------------------------------------

    def _fill(self, record: BatchRecord, target: Target, alive: Callable[[], object]) -> None:
        """Send documents from the cursor until the window is full or the listing ends."""
        batch_id = record.id
        room = self.settings.batch_window - self.store.in_flight(batch_id)
        if record.fresh is None:  # a target without manifest lines: nothing to compare
            names, _ = target.names(MANIFEST_DIR, "", 1)
            record = record.with_(fresh=not names)
            self.store.update(batch_id, fresh=record.fresh)
        retrying = record.phase == "retry"
        source = _ManifestObjects(target) if retrying else self.ports.source(record, target)
        cursor = record.cursor
        check = retrying or not (record.overwrite or record.fresh)
        until = time.monotonic() + SENDING_SECONDS
        for _ in range(PAGES_A_STEP):
            if room <= 0:
                return
            alive()
            documents, done = source.page(cursor, min(room, PAGE) if not retrying else PAGE)
            for document, after in documents:
                if room <= 0 or time.monotonic() > until:
                    return
                if retrying:
                    document = self._failed_one(target, document)
                if not document.url and not document.refused:
                    cursor = after
                    self.store.passed(batch_id, cursor)
                    continue
                outcome = self._one(record, target, document, after, check, retrying)
                if outcome == WAIT:
                    return  # the client's jobs in flight are full: the cursor stays
                cursor = after
                room -= outcome
            if done:
                self.store.update(batch_id, listed_all=True)
                return

    def _failed_one(self, target: Target, document: Document) -> Document:
        """In a retry: the document a manifest object names when it failed, else none."""
        line = read_line_object(target, document.name)
        if line is None or line.get("status") not in FAILED:
            return Document("", "")
        return Document(str(line.get("source", "")), str(line.get("name", "")), {},
                        dict(line.get("options") or {}))

    def _one(self, record: BatchRecord, target: Target, document: Document, cursor: str,
             check: bool, retrying: bool) -> int:
        """Skip, refuse, send or hold back one document: SENT, PASSED or WAIT."""
        batch_id = record.id
        options = document_options(record, document)
        counted = {"failed": -1} if retrying else {"listed": 1}
        if document.refused:
            return self._refuse(record, target, document, options, cursor, counted,
                                document.refused)
        try:  # the gate first: a refused document's object is never asked
            self.ports.admit(record, self._kwargs(record, document, options, {}))
        except QuotaExceeded:
            return WAIT
        except OcrError as exc:
            if exc.retryable:
                raise  # Redis or a store briefly away: the step is tried again
            return self._refuse(record, target, document, options, cursor, counted,
                                exc.code)
        pin: dict[str, Any] = {}
        if document.url.startswith("s3://") and document.version.get("etag"):
            pin = {"url_etag": document.version["etag"]}
        elif is_url(document.url):  # a manifest's document: its version from a HEAD
            try:
                info = locate(document.url, self.settings).info
            except OcrError as exc:
                return self._refuse(record, target, document, options, cursor, counted,
                                    exc.code)
            version = {"version_id": info.version} if info.version else \
                {"etag": info.etag, "size": info.size}
            document = Document(document.url, document.name, version, document.options)
            pin = {"url_version": info.version} if info.version else \
                {"url_etag": info.etag} if info.etag else {}
        if check and not retrying:
            line = read_line(target, document.name)
            failed = line is not None and line.get("status") in FAILED
            if same_read(line, document, options_digest(options)) \
                    and not (failed and record.retry_failed):
                self.store.passed(batch_id, cursor, skipped=1,
                                  **({"skipped_failed": 1} if failed else {}), **counted)
                return PASSED
        job_id = self.ports.send(record, self._kwargs(record, document, options, pin))
        self.store.sent(batch_id, job_id, document.to_json(), cursor, **counted)
        return SENT

    def _refuse(self, record: BatchRecord, target: Target, document: Document,
                options: dict[str, Any], cursor: str, counted: dict[str, int],
                code: str) -> int:
        """A document refused before any job read it: its line says why; counted."""
        line = failed_line(record, document, options, code)
        self._write_line(target, document, line)
        write_part(target, [line])
        self.store.passed(record.id, cursor, **merged(counted, line_counts(line)))
        return PASSED

    def _kwargs(self, record: BatchRecord, document: Document, options: dict[str, Any],
                pin: dict[str, Any]) -> dict[str, Any]:
        """The job's kwargs: the document, its options, where its output goes."""
        output = str(options.get("output", "text"))
        if record.document_callbacks and record.callback_url:
            pin = {**pin, "callback_url": record.callback_url}  # each job's summary
        suffix_of = output if output in FORMATS else "text"  # the gate refuses it
        # A local folder's document is a file here; any other batch's names a URL only.
        source = {"path": document.url} if record.local else {"url": document.url}
        return {**options, **pin, **source,
                "filename": document.name.rsplit("/", 1)[-1],
                "result_url": f"{record.target}{output_name(document.name, suffix_of)}"}

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
            kwargs = self._kwargs(record, document, document_options(record, document), pin)
            new_id = self.ports.send(record, kwargs)
            log.warning("batch %s: job %s's ending died with its host; %s sent again as %s",
                        record.id, job_id, document.name, new_id)
            self.store.sent(record.id, new_id, document.to_json(), record.cursor)
            self.store.settled(record.id, job_id)

    # --- the end -----------------------------------------------------------------------

    def fail(self, batch_id: str, error: OcrError) -> None:
        """End a batch whose source or target is refused for good (FAILURE, its error)."""
        self.store.update(batch_id, error=error.to_dict())
        self.store.end(batch_id, BatchState.FAILURE)
        record = self.store.get(batch_id)
        log.warning("batch %s failed: %s", batch_id, error.code)
        if record.callback_url:
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": BatchState.FAILURE.value,
                                       "error": error.to_dict(), **record.counts()})

    def _finish(self, batch_id: str, target: Target, state: BatchState,
                alive: Callable[[], object]) -> float | None:
        lines = compose_from_parts(target, alive)
        self.store.end(batch_id, state)
        record = self.store.get(batch_id)
        log.info("batch %s ended %s (%d manifest lines)", batch_id, state, lines)
        if record.callback_url:
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": state.value, **record.counts()})
        return None


class _ManifestObjects:
    """A retry's source: the target's manifest objects (each a document's line)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        names, more = self.target.names(MANIFEST_DIR, cursor, count)
        return [(Document("-", name), name) for name in names], not more
