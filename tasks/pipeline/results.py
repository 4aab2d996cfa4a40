"""Document results from their pages: assembling, retries, cancellation.

Pure functions over the typed records of tasks/records/results.py; used by worker
children (no engine or PDF imports).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from tasks.errors import ERROR_CLASSES, PagesFailed, error_info
from tasks.records.results import DocumentResult, PageError, PageRecord
from tasks.records.status import JobStatus

OUTPUT_VERSION = 2
"""The version of what the pipeline writes for given input and options: part of the
result cache's key (tasks/lifecycle/jobs.py `cache_key`), so a result cached before a
change of an output's format is not served after it. Raise it with any such change.
2: Markdown with page breaks, heading levels, lists and reading order."""


def failed_page(number: int, exc: BaseException) -> PageRecord:
    return PageRecord(number, source="ocr", error=PageError.from_json(error_info(exc)))


def assemble(pages: Iterable[PageRecord], base: DocumentResult) -> DocumentResult:
    """The document result from its pages: SUCCESS, PARTIAL, or raise when all failed."""
    ordered = sorted(pages, key=lambda p: p.number)
    failed = [p for p in ordered if p.error is not None]
    if ordered and len(failed) == len(ordered):
        codes = {p.error.code for p in failed if p.error is not None}
        cls = ERROR_CLASSES.get(codes.pop(), PagesFailed) if len(codes) == 1 else PagesFailed
        first = failed[0]
        message = first.error.message if first.error is not None else ""
        raise cls(f"all {len(failed)} pages failed; page {first.number}: {message}")
    return replace(base, status=JobStatus.PARTIAL if failed else JobStatus.SUCCESS,
                   pages=ordered)


def merge_previous(result: DocumentResult, previous: DocumentResult) -> DocumentResult:
    """A retry's result completed with the pages its earlier job already had."""
    redone = {p.number for p in result.pages}
    kept = [p for p in previous.pages if p.number not in redone and not p.failed]
    merged = assemble([*kept, *result.pages], result)
    merged.page_count = previous.page_count if previous.page_count is not None \
        else result.page_count
    merged.retry_of = previous.id
    return merged


def cancelled_result(job_id: str, pages: Iterable[PageRecord],
                     base: DocumentResult) -> DocumentResult:
    """A cancelled document: the pages finished before the cancel, in order."""
    done = sorted((p for p in pages if not p.failed), key=lambda p: p.number)
    return replace(base, id=job_id, status=JobStatus.CANCELLED, pages=done)
