"""Document results from their pages: assembling, retries, cancellation.

Pure functions over the typed records of tasks/records/results.py; used by worker
children (no engine or PDF imports).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from tasks.error_codes import ERROR_CLASSES, error_info
from tasks.errors import PagesFailed
from tasks.evaluation.scoring import score_pages, total
from tasks.records.results import DocumentResult, PageError, PageRecord
from tasks.records.status import JobStatus

OUTPUT_VERSION = 4  # 4: a paragraph is one block of lines in plain text
"""The version of what the pipeline writes for given input and options: part of the
result cache's key (tasks/lifecycle/jobs.py `cache_key`), so a result cached before a
change of an output's format is not served after it. Raise it with any such change.
2: Markdown with page breaks, heading levels, lists and reading order.
3: a block of columns side by side read column by column; glyphs named without Unicode
(IBM's SM590000) and a table's private-use characters read as they draw."""


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


def page_engines(pages: Iterable[PageRecord]) -> list[str]:
    """The engines that read the document's OCR'd pages, in page order, once each.

    A page read again by the job's escalation engine names both: the engine of its
    first reading, then the one whose text it keeps.
    """
    names: list[str] = []
    for page in pages:
        if page.source != "ocr" or page.failed:
            continue
        escalation = page.escalation
        if escalation is not None and escalation.error is None:
            names.append(escalation.source)
        if page.engine:
            names.append(page.engine)
    return list(dict.fromkeys(names))


def named_engines(engine: dict[str, Any], pages: Iterable[PageRecord],
                  models: Mapping[str, str | None]) -> dict[str, Any]:
    """A result's `engine`, naming the engine(s) that read its pages.

    `engine` describes the job's engine; where one other engine read every OCR'd page
    (a Chinese page routed to rapidocr), `name` is that one and `model` its model
    (from `models`, None when not known here); where several did, `name` stays the
    job's and `names` lists them all, in page order. A job with no OCR'd page keeps
    its engine's description.
    """
    names = page_engines(pages)
    out = dict(engine)
    if len(names) == 1 and names[0] != out.get("name"):
        out.update(name=names[0], model=models.get(names[0]))
    elif len(names) > 1:
        out["names"] = names
    return out


def with_scores(result: DocumentResult, ground_truth: str | None) -> DocumentResult:
    """The result with `scores` against a job's ground truth (none given: unchanged).

    The truth's pages (split by form feeds) are the result's pages in order: scored one
    by one where they agree in number (`scores.pages`, by page number), else as one
    text. What is scored is each page's `text` (Markdown for output=markdown).
    """
    if ground_truth is None:
        return result
    truth = ground_truth.split("\f")
    pages = sorted(result.pages, key=lambda p: p.number)
    scores = score_pages(truth, [p.text for p in pages])
    shown: dict[str, Any] = dict(total(scores).to_json())
    if len(truth) == len(pages):
        shown["pages"] = [{"number": p.number, **one.to_json()}
                          for p, one in zip(pages, scores, strict=True)]
    return replace(result, scores=shown)
