"""A batch document's manifest line: what its job's ending (or its refusal) says.

Pure; runs where a batch's driver runs (a worker child, or submit.py for a local
folder). One line a document, written under the target as its job ends.
"""

from __future__ import annotations

import time
from typing import Any

from tasks.errors import DuplicateLine
from tasks.lifecycle.batch_sources import Document, options_digest
from tasks.records.batches import BatchRecord
from tasks.records.status import JobStatus

FAILED = (JobStatus.FAILURE, JobStatus.PARTIAL)
SKIPPED = "SKIPPED"  # a duplicate line: its document is read once, by the first line


def document_options(record: BatchRecord, document: Document) -> dict[str, Any]:
    """A document's job options: the batch's, then its manifest line's own."""
    return {k: v for k, v in {**record.options, **document.options}.items()
            if v is not None}


def manifest_line(record: BatchRecord, document: Document, job_id: str,
                  result: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """The manifest line of a document whose job ended with `result`.

    `engine`: the engine that read the pages (the result's), not the one asked for.
    """
    raw_pages, raw_written = result.get("pages"), result.get("result_object")
    pages: list[Any] = raw_pages if isinstance(raw_pages, list) else []
    failed = [p for p in pages if isinstance(p, dict) and p.get("error")]
    written: dict[str, Any] = raw_written if isinstance(raw_written, dict) else {}
    error = (result.get("error") or written.get("error") or {})
    status = JobStatus.of(result.get("status")).value
    if written.get("error"):
        status = JobStatus.FAILURE.value  # its output was not written
    return {"source": document.url, "name": document.name,
            "source_version": document.version, "options": options,
            "options_digest": options_digest(options), "status": status,
            "pages": len(pages), "pages_failed": len(failed),
            "error": error.get("code") if isinstance(error, dict) else None,
            "outputs": [written["url"]] if written.get("url") and not written.get("error")
            else [],
            "seconds": (result.get("timings") or {}).get("total_seconds"),
            "engine": engine_of(result), "job_id": job_id, "batch": record.id,
            "ended": round(time.time(), 3),
            **({"line_at": int(document.at)} if document.at else {})}


def engine_of(result: dict[str, Any]) -> str | None:
    """The engine that read a job's pages: the pages' own, else the result's."""
    engines = [p["engine"] for p in result.get("pages") or []
               if isinstance(p, dict) and isinstance(p.get("engine"), str) and p["engine"]]
    if engines:
        return max(set(engines), key=engines.count)
    engine = result.get("engine")
    return engine.get("name") if isinstance(engine, dict) else engine


def failed_line(record: BatchRecord, document: Document, options: dict[str, Any],
                code: str) -> dict[str, Any]:
    """The manifest line of a document refused before any job read it."""
    return {**manifest_line(record, document, "", {"status": JobStatus.FAILURE.value},
                            options), "error": code}


def duplicate_line(record: BatchRecord, document: Document, options: dict[str, Any],
                   first: str) -> dict[str, Any]:
    """The manifest line of a document an earlier line (at byte `first`) names already."""
    return {**failed_line(record, document, options, DuplicateLine.code),
            "status": SKIPPED, "duplicate_of": int(first)}


def line_counts(line: dict[str, Any]) -> dict[str, int]:
    """What a document's ending adds to the batch's counts."""
    pages, failed = int(line.get("pages") or 0), int(line.get("pages_failed") or 0)
    ok = line.get("status") == JobStatus.SUCCESS
    return {"done" if ok else "failed": 1, "pages_done": pages - failed,
            "pages_failed": failed}


def merged(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in {*a, *b}}
