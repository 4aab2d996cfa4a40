"""A batch's driver: one step collects the documents that ended and sends the next ones.

Runs in whichever worker child takes the batch's `ocr.batch_step` (tasks/queue/
batch_tasks.py sends the next step when this one returns a delay). No Celery here:
sending jobs, reading their ends and cancelling them go through `BatchPorts`.

A step, under the batch's lock: each document in flight whose job ended gets its
manifest line written under the target (`<target>.manifest/<sha256 of name>.json`),
then leaves the flight and is counted; then documents are read from the source's
cursor and sent as jobs until OCR_BATCH_WINDOW are in flight, a document whose
manifest line already shows its source version and options being skipped (unless the
batch overwrites); the cursor moves past each document as its job is sent. When the
listing is done and nothing is in flight, `manifest.jsonl` is composed and the batch
ends SUCCESS, PARTIAL (some documents failed), FAILURE (all did) or CANCELLED. A crash
anywhere re-reads at most the documents in flight: the cursor and the flight are in
Redis, what ended is in the target.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol

from tasks.errors import OcrError
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
    source_of,
    target_of,
    write_part,
)
from tasks.lifecycle.url_inputs import locate
from tasks.state.batch_store import FINAL, BatchStore

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
FAILED = ("FAILURE", "PARTIAL")


class BatchPorts(Protocol):
    """What a step needs from the queue layer."""

    def send(self, record: dict[str, str], kwargs: dict[str, Any]) -> str:
        """Send one document's job (the batch's client, priority); its id."""

    def ended(self, job_ids: list[str]) -> list[str]:
        """Which of these jobs ended."""

    def result(self, job_id: str) -> dict[str, Any]:
        """An ended job's public result."""

    def cancel(self, job_ids: list[str]) -> None:
        """Cancel these jobs (queued ones never start, running ones stop)."""

    def notify(self, record: dict[str, str], body: dict[str, Any]) -> None:
        """POST the batch's summary to its `callback_url` (when it names one)."""

    def stalled(self, job_ids: list[str]) -> list[str]:
        """Which of these unended jobs had their ending claimed long ago, never finished."""

    def forget(self, job_ids: list[str]) -> None:
        """Let the Redis records of these settled jobs go soon (their result, its output)."""


def document_options(record: dict[str, str], document: Document) -> dict[str, Any]:
    """A document's job options: the batch's, then its manifest line's own."""
    options = json.loads(record.get("options") or "{}")
    return {k: v for k, v in {**options, **document.options}.items() if v is not None}


def manifest_line(record: dict[str, str], document: Document, job_id: str,
                  result: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of a document whose job ended with `result`."""
    raw_pages, raw_written = result.get("pages"), result.get("result_object")
    pages: list[Any] = raw_pages if isinstance(raw_pages, list) else []
    failed = [p for p in pages if isinstance(p, dict) and p.get("error")]
    written: dict[str, Any] = raw_written if isinstance(raw_written, dict) else {}
    error = (result.get("error") or written.get("error") or {})
    status = str(result.get("status", "FAILURE"))
    if written.get("error"):
        status = "FAILURE"  # its output was not written
    engine = result.get("engine")
    return {"source": document.url, "name": document.name,
            "source_version": document.version, "options": options,
            "options_digest": options_digest(options), "status": status,
            "pages": len(pages), "pages_failed": len(failed),
            "error": error.get("code") if isinstance(error, dict) else None,
            "outputs": [written["url"]] if written.get("url") and not written.get("error")
            else [],
            "seconds": (result.get("timings") or {}).get("total_seconds"),
            "engine": engine.get("name") if isinstance(engine, dict) else engine,
            "job_id": job_id, "batch": record.get("id", ""),
            "ended": round(time.time(), 3)}


def failed_line(record: dict[str, str], document: Document, options: dict[str, Any],
                error: OcrError) -> dict[str, Any]:
    """The manifest line of a document refused before any job read it (HEAD failed)."""
    return {**manifest_line(record, document, "", {"status": "FAILURE"}, options),
            "error": error.code}


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
        if not record or record.get("state") in FINAL or record.get("chain") != chain:
            return None
        holder = uuid.uuid4().hex
        if not self.store.lock(batch_id, holder, LOCK_SECONDS):
            return self.settings.batch_step_seconds  # another step is running: later
        try:
            return self._step(batch_id, record,
                              lambda: self.store.extend(batch_id, holder, LOCK_SECONDS))
        finally:
            self.store.unlock(batch_id, holder)

    def _step(self, batch_id: str, record: dict[str, str],
              alive: Callable[[], None]) -> float | None:
        self.store.touch(batch_id)
        target = target_of(record["target"], self.settings)
        self._collect(batch_id, record, target)
        if record.get("cancel"):
            flight = self.store.flight(batch_id)
            if flight and not record.get("cancel_sent"):
                self.ports.cancel(list(flight))
                self.store.update(batch_id, cancel_sent="1")
            if not flight:
                return self._finish(batch_id, target, "CANCELLED", alive)
            return self.settings.batch_step_seconds
        if record.get("listed_all") != "1":
            self._fill(batch_id, record, target, alive)
        record = self.store.get(batch_id)  # as the endings and the listing left it
        if record.get("listed_all") == "1" and self.store.in_flight(batch_id) == 0:
            state = ("SUCCESS" if int(record["failed"]) == 0 else
                     "FAILURE" if int(record["done"]) == 0 else "PARTIAL")
            return self._finish(batch_id, target, state, alive)
        return self.settings.batch_step_seconds

    # --- endings -----------------------------------------------------------------------

    def _collect(self, batch_id: str, record: dict[str, str], target: Target) -> int:
        """Write the manifest line of each document whose job ended; count it; how many."""
        flight = self.store.flight(batch_id)
        if not flight:
            return 0
        ended = self.ports.ended(list(flight))
        waiting = [job_id for job_id in flight if job_id not in set(ended)]
        stalled = self.ports.stalled(waiting) if waiting else []
        if stalled:
            self._resend(batch_id, record, flight, stalled)
        if not ended:
            return 0

        def line_of(job_id: str) -> dict[str, Any] | None:
            document = Document.from_json(flight[job_id])
            result = self.ports.result(job_id)
            if result.get("status") == "CANCELLED":
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
            self.store.settled(batch_id, job_id, **(_counts(line) if line else {}))
        # What each job left in Redis is in the target now: Redis keeps the window's.
        self.ports.forget(ended)
        return len(ended)

    def _write_line(self, target: Target, document: Document, line: dict[str, Any]) -> None:
        target.put(manifest_name(document.name), json.dumps(line, sort_keys=True).encode(),
                   "application/json")

    # --- the listing -------------------------------------------------------------------

    def _fill(self, batch_id: str, record: dict[str, str], target: Target,
              alive: Callable[[], None]) -> None:
        """Send documents from the cursor until the window is full or the listing ends."""
        room = self.settings.batch_window - self.store.in_flight(batch_id)
        if "fresh" not in record:  # a target without manifest lines: nothing to compare
            names, _ = target.names(MANIFEST_DIR, "", 1)
            record["fresh"] = "" if names else "1"
            self.store.update(batch_id, fresh=record["fresh"])
        source = self._source(record, target)
        cursor = record.get("cursor", "")
        retrying = record.get("phase") == "retry"
        check = retrying or not (record.get("overwrite") == "1" or record.get("fresh") == "1")
        for _ in range(PAGES_A_STEP):
            if room <= 0:
                return
            alive()
            documents, done = source.page(cursor, min(room, PAGE) if not retrying else PAGE)
            for document, after in documents:
                if room <= 0:
                    return
                cursor = after
                if retrying:
                    document = self._failed_one(target, document)
                    if not document.url:
                        self.store.passed(batch_id, cursor)
                        continue
                if not document.url:
                    self.store.passed(batch_id, cursor)
                    continue
                room -= self._one(batch_id, record, target, document, cursor, check,
                                  retrying)
            if done:
                self.store.update(batch_id, listed_all="1")
                return

    def _source(self, record: dict[str, str], target: Target) -> Source:
        if record.get("phase") == "retry":
            return _ManifestObjects(target)
        return source_of(record["source"], self.settings, target_of(record["target"],
                                                                     self.settings))

    def _failed_one(self, target: Target, document: Document) -> Document:
        """In a retry: the document a manifest object names when it failed, else none."""
        line = read_line_object(target, document.name)
        if line is None or line.get("status") not in FAILED:
            return Document("", "")
        return Document(str(line.get("source", "")), str(line.get("name", "")), {},
                        dict(line.get("options") or {}))

    def _one(self, batch_id: str, record: dict[str, str], target: Target,
             document: Document, cursor: str, check: bool, retrying: bool) -> int:
        """Skip, refuse or send one document; 1 when a job was sent."""
        options = document_options(record, document)
        digest = options_digest(options)
        counted = {"failed": -1} if retrying else {"listed": 1}
        pin: dict[str, Any] = {}
        if document.url.startswith("s3://") and document.version.get("etag"):
            pin = {"url_etag": document.version["etag"]}
        else:  # a manifest's document: its version from a HEAD
            try:
                info = locate(document.url, self.settings).info
            except OcrError as exc:
                line = failed_line(record, document, options, exc)
                self._write_line(target, document, line)
                write_part(target, [line])
                self.store.passed(batch_id, cursor, **_merge(counted, _counts(line)))
                return 0
            version = {"version_id": info.version} if info.version else \
                {"etag": info.etag, "size": info.size}
            document = Document(document.url, document.name, version, document.options)
            pin = {"url_version": info.version} if info.version else \
                {"url_etag": info.etag} if info.etag else {}
        if check and not retrying and same_read(read_line(target, document.name), document,
                                                digest):
            self.store.passed(batch_id, cursor, skipped=1, **counted)
            return 0
        job_id = self._send(record, document, options, pin)
        self.store.sent(batch_id, job_id, document.to_json(), cursor, **counted)
        return 1

    def _send(self, record: dict[str, str], document: Document, options: dict[str, Any],
              pin: dict[str, Any]) -> str:
        output = str(options.get("output", "text"))
        if record.get("document_callbacks") == "1" and record.get("callback_url"):
            pin = {**pin, "callback_url": record["callback_url"]}  # each job's summary
        kwargs = {**options, **pin, "url": document.url,
                  "filename": document.name.rsplit("/", 1)[-1],
                  "result_url": f"{record['target']}{output_name(document.name, output)}"}
        return self.ports.send(record, kwargs)

    def _resend(self, batch_id: str, record: dict[str, str], flight: dict[str, Any],
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
            new_id = self._send(record, document, document_options(record, document), pin)
            log.warning("batch %s: job %s's ending died with its host; %s sent again as %s",
                        batch_id, job_id, document.name, new_id)
            self.store.sent(batch_id, new_id, document.to_json(), record.get("cursor", ""))
            self.store.settled(batch_id, job_id)

    # --- the end -----------------------------------------------------------------------

    def fail(self, batch_id: str, error: OcrError) -> None:
        """End a batch whose source or target is refused for good (FAILURE, its error)."""
        self.store.update(batch_id, error=error.to_dict())
        self.store.end(batch_id, "FAILURE")
        record = self.store.get(batch_id)
        log.warning("batch %s failed: %s", batch_id, error.code)
        if record.get("callback_url"):
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": "FAILURE", "error": error.to_dict(),
                                       **counts_of(record)})

    def _finish(self, batch_id: str, target: Target, state: str,
                alive: Callable[[], None]) -> float | None:
        lines = compose_from_parts(target, alive)
        self.store.end(batch_id, state)
        record = self.store.get(batch_id)
        log.info("batch %s ended %s (%d manifest lines)", batch_id, state, lines)
        if record.get("callback_url"):
            self.ports.notify(record, {"id": batch_id, "event": "batch.ended",
                                       "status": state, **counts_of(record)})
        return None


class _ManifestObjects:
    """A retry's source: the target's manifest objects (each a document's line)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def page(self, cursor: str, count: int) -> tuple[list[tuple[Document, str]], bool]:
        names, more = self.target.names(MANIFEST_DIR, cursor, count)
        return [(Document("-", name), name) for name in names], not more


def _counts(line: dict[str, Any]) -> dict[str, int]:
    """What a document's ending adds to the batch's counts."""
    pages, failed = int(line.get("pages") or 0), int(line.get("pages_failed") or 0)
    ok = line.get("status") == "SUCCESS"
    return {"done" if ok else "failed": 1, "pages_done": pages - failed,
            "pages_failed": failed}


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}


def counts_of(record: dict[str, str]) -> dict[str, int]:
    """The record's counts as numbers."""
    return {name: int(record.get(name) or 0) for name in
            ("listed", "done", "failed", "skipped", "pages_done", "pages_failed")}
