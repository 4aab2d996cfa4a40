"""A page task's descriptor: its JSON round trip, its size, and the header that carries it.

Pure: records and headers alone, no Redis, no Celery worker.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

from tasks.errors import TransientError
from tasks.queue.message_headers import PAGE_HEADER, carried, page_descriptor, page_headers
from tasks.records.clients import CLIENT_HEADER
from tasks.records.jobs import JobStatus, PageDescriptor
from tasks.records.results import DocumentResult
from tests.units.test_document_meta import meta_of


def test_a_descriptor_goes_through_json_unchanged() -> None:
    meta = meta_of(10)
    described = meta.describe([4])
    back = PageDescriptor.from_json(json.loads(json.dumps(described.to_json())))
    assert back == described
    assert (back.job_id, back.number, back.job.engine, back.total, back.format) == \
        ("job-1", 4, "tesseract", 10, "pdf")
    assert back.request == meta.request
    assert back.job.url_prefixes == ("https://in.example/",)
    # a view of the job, its keys flat in the header as they always were
    assert set(described.to_json()) == {"job_id", "request", "engine", "started",
                                        "url_prefixes", "pages", "total", "reply_queue",
                                        "format"}
    chunk = described.of_pages(1, 3, 5)
    assert PageDescriptor.from_json(json.loads(json.dumps(chunk.to_json()))).pages == (1, 3, 5)


def test_a_url_input_s_head_and_an_image_s_format_go_with_it() -> None:
    head = {"size": 123, "etag": "e1", "version": None, "sha256": None}
    meta = replace(meta_of(3), input_object=head,
                   base=DocumentResult(filename="a.tiff", status=None, format="tiff"))
    back = PageDescriptor.from_json(json.loads(json.dumps(meta.describe([2]).to_json())))
    assert back.input_object == head and back.format == "tiff"


def test_a_descriptor_does_not_grow_with_the_document_and_leaves_its_ground_truth() -> None:
    """The meta grows with the pages (its base result, its page lists); a page's does not."""
    small, big = meta_of(4, ground_truth="truth " * 1000), meta_of(400)
    assert len(big.to_json()) > 50 * len(small.to_json()) / 4
    sizes = {len(json.dumps(m.describe([2]).to_json())) for m in (small, big)}
    assert max(sizes) < 600 and max(sizes) - min(sizes) <= 2, sizes
    described = small.describe([2])
    assert "ground_truth" not in described.to_json()["request"]
    assert described.request.ground_truth is None


def test_the_header_carries_it_and_its_retries_carry_it_on() -> None:
    described = meta_of(6).describe([2])
    headers = page_headers("billing", described)
    assert headers[CLIENT_HEADER] == "billing"
    # what Celery hands the task: the message's headers as its request's attributes
    delivered = SimpleNamespace(**json.loads(json.dumps(headers)))
    assert page_descriptor(delivered) == described
    assert carried(delivered) == json.loads(json.dumps(headers))
    # a previous release's page message: no header, no descriptor
    assert page_descriptor(SimpleNamespace(**{CLIENT_HEADER: "billing"})) is None
    assert PAGE_HEADER not in carried(SimpleNamespace(**{CLIENT_HEADER: "billing"}))


def test_a_failure_in_a_page_task_ends_the_job_with_its_request() -> None:
    meta = meta_of(6)
    outcome = meta.describe([2]).failed(TransientError("Redis restarted"))
    assert (outcome.job_id, outcome.status, outcome.engine, outcome.started) == (
        "job-1", JobStatus.FAILURE, "tesseract", 1.7e9)
    assert outcome.request is not None
    assert outcome.request.callback_url == meta.request.callback_url

