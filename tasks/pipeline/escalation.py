"""Escalation: a page the job's engine is unsure of, read again by a vision-language model.

Pure functions over page records (docs/escalation.md): which pages escalate and why
(`mark`), and the page each way its second reading ends: the escalation engine's text
on the first reading's word boxes (`escalated_page`), or the first reading kept with
the error that stopped the second (`keep_first`). Runs in worker children: whether a
marked page may go now, and where, is `tasks.lifecycle.fanout.PageTasks`'s (for a PDF's
page and an image's), which also reads it again with the escalation engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from tasks.engines.vlm.word_placement import place_words
from tasks.error_codes import error_info
from tasks.errors import OcrError
from tasks.pipeline.layouts import LAYOUT_OUTPUTS, words_hocr
from tasks.records.request import JobRequest
from tasks.records.results import (
    LOW_CONFIDENCE,
    NO_TEXT,
    Escalation,
    PageError,
    PageRecord,
    TextLayer,
)


def escalation_reason(page: PageRecord, to: str | None, below: float | None) -> str | None:
    """Why `page` is read again by engine `to`, or None: it keeps its reading.

    Only an OCR'd page that did not fail, read by another engine than `to`, escalates:
    with no text (a blank page is `blank`, never OCR'd), or with a mean word confidence
    below `below` (0 to 1; the page's own `confidence` is 0 to 100). `below` 0 sends
    none, 1 every such page.
    """
    if to is None or below is None or below <= 0:
        return None
    if page.source != "ocr" or page.failed or page.engine == to:
        return None
    if not page.text.strip():
        return NO_TEXT
    if below >= 1 or (page.confidence is not None and page.confidence / 100 < below):
        return LOW_CONFIDENCE
    return None


def mark(page: PageRecord, request: JobRequest,
         refused: Callable[[str], OcrError | None]) -> PageRecord:
    """`page` with its `escalation` when it escalates (else `page` itself).

    `refused(engine)`: why a page may not go to that engine now, or None. It goes when
    a page sent to the engine's queue is taken (a live worker consumes it, or its pool
    scales from zero: OCR_ENGINES_FROM_ZERO) and the client's cap a day on that engine
    has room. Refused, the page keeps its first reading now with that error
    (`engine_unavailable`, `page_quota_exceeded`); else it awaits its second reading
    (`awaits_second_reading`), up to OCR_ESCALATE_WAIT_SECONDS.
    """
    to = request.escalate
    reason = escalation_reason(page, to, request.escalate_below)
    if reason is None or to is None:
        return page
    confidence = None if page.confidence is None else round(page.confidence / 100, 2)
    page = replace(page, escalation=Escalation(page.engine or "", to, reason, confidence))
    error = refused(to)
    return page if error is None else keep_first(page, error)


def awaits_second_reading(page: PageRecord) -> bool:
    """Whether `page` (marked by `mark`) goes to its escalation engine's queue."""
    return page.escalation is not None and page.escalation.error is None


def keep_first(first: PageRecord, error: BaseException | PageError) -> PageRecord:
    """The first reading, kept: its escalation carries `error` (a code, a safe message)."""
    assert first.escalation is not None
    shown = error if isinstance(error, PageError) else PageError.from_json(error_info(error))
    return replace(first, escalation=replace(first.escalation, error=shown))


def escalated_page(first: PageRecord, second: PageRecord, output: str) -> PageRecord:
    """The page as the escalation engine read it (`second`), its words on `first`'s boxes.

    A model that gives no word boxes has its words placed on the first reading's
    (`place_words`, as a VLM job's are on tesseract's), with the first reading's
    geometry (size, rotation, skew), and its hOCR drawn from them where the job's
    `output` is hOCR or ALTO. The preview stays the first reading's (stored already);
    `seconds` counts both readings. The first reading's text stays in `escalation`
    (`first_text`): one page's text, as the join's copy of it goes with the job.
    """
    assert first.escalation is not None
    seconds = round((first.seconds or 0.0) + (second.seconds or 0.0), 3)
    escalation = replace(first.escalation, first_text=first.text)
    page = replace(second, escalation=escalation, seconds=seconds, preview=None)
    if second.words or not first.words:
        return page
    words, unplaced = place_words(second.text, first.words)
    hocr = None
    if output in LAYOUT_OUTPUTS and first.image_size is not None:
        hocr = words_hocr(first.number, words, first.image_size)
    return replace(page, words=words, image_size=first.image_size, rotation=first.rotation,
                   skew=first.skew, hocr=hocr,
                   text_layer=TextLayer(boxes=first.engine or "", words=len(words),
                                        unplaced=unplaced))
