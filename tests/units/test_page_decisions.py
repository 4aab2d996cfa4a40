"""Which pages escalate and where, decided in the lifecycle without Celery (`PageTasks`).

A real Redis holds the join; the fake engine reads a scanned PDF's page, which
escalates (`escalate_below` 1: every OCR'd page). The queue layer's ports are fakes:
`taken` says whether a worker would take the escalation engine's page, `send` records
what would be published. The one exit's ports are tests/units/test_lifecycle.py's `RecordingPorts`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tasks.lifecycle.fanout import DUE_GRACE, PageTasks, run_pdf_page
from tasks.lifecycle.open_documents import OpenDocumentCache
from tasks.pipeline.escalation import awaits_second_reading
from tasks.records.jobs import PageDescriptor
from tasks.records.results import PageError, PageRecord
from tasks.state.join import PageProgress
from tasks.state.reservations import Reservations
from tests.pdf_fixtures import image_pdf, plain_pages
from tests.units.test_lifecycle import Life, fan_out, make_life


@pytest.fixture
def life(redis_url: str) -> Iterator[Life]:
    made = make_life(redis_url)
    yield made
    made.engines.unload()


def page_tasks(life: Life, taken: bool, sent: list[tuple[list[PageDescriptor], float, float]]
               ) -> PageTasks:
    return PageTasks(life.join, life.ender, life.stores,
                     Reservations(life.client, 600, lambda ids: []), life.settings,
                     lambda job_id, total: PageProgress(None, lambda done, total: None),
                     lambda engine: taken, lambda engine, pages, client, job: None,
                     lambda pages, due, check_in: sent.append((pages, due, check_in)))


def first_reading(life: Life, pages: PageTasks, job_id: str) -> tuple[PageDescriptor,
                                                                       PageRecord]:
    """The job's page 1 as its page task reads it (the meta read: no descriptor)."""
    meta = fan_out(life, job_id, image_pdf(plain_pages(1)), escalate="vlm-api",
                   escalate_below=1.0)
    described, skipped = pages.to_read(job_id, None, lambda _meta: [1])
    assert described is not None, skipped
    page = run_pdf_page(described, life.engines, OpenDocumentCache(), life.settings,
                        life.stores)
    assert described.pages == (1,) and meta.job_id == job_id
    return described, pages.marked(page, described.request)


def test_a_page_no_worker_would_take_keeps_its_first_reading(life: Life) -> None:
    sent: list[tuple[list[PageDescriptor], float, float]] = []
    pages = page_tasks(life, False, sent)
    described, page = first_reading(life, pages, "job-unserved")
    assert page.escalation is not None and page.escalation.to == "vlm-api"
    assert page.escalation.error is not None
    assert page.escalation.error.code == "engine_unavailable"
    assert not awaits_second_reading(page)
    pages.record(described, page)  # its only page: the job ends
    [ended] = life.ports.published
    assert ended.result is not None
    assert ended.result.pages[0].escalation == page.escalation
    assert sent == []


def test_an_escalated_page_is_sent_and_its_first_reading_kept_when_lost(life: Life) -> None:
    sent: list[tuple[list[PageDescriptor], float, float]] = []
    pages = page_tasks(life, True, sent)
    described, page = first_reading(life, pages, "job-escalated")
    assert awaits_second_reading(page)
    before = time.time()
    pages.escalate(described, [page])
    [(descriptors, due, check_in)] = sent
    assert [d.pages for d in descriptors] == [(1,)]
    assert [d.job_id for d in descriptors] == ["job-escalated"]
    wait = life.settings.escalate_wait_seconds
    assert before + wait <= due <= time.time() + wait
    assert check_in == wait + DUE_GRACE
    assert pages.first_reading("job-escalated", 1) == page
    lost = PageError("worker_lost", "the escalation engine's child was killed")
    pages.record_lost("escalation", "job-escalated", 1, lost)
    [ended] = life.ports.published
    assert ended.result is not None
    [kept] = ended.result.pages
    assert kept.escalation is not None and kept.escalation.error == lost
    assert kept.text == page.text
    # The job has ended: a late loss records nothing, an escalation sends nothing.
    pages.record_lost("escalation", "job-escalated", 1, lost)
    pages.escalate(described, [page])
    assert len(life.ports.published) == 1 and len(sent) == 1
