"""The job lifecycle in-process, without Celery: fan-out join, merge, cancel, the one exit.

A real Redis (the tests' own) holds the join; the fake engine (tests/fake_engines.py)
reads pages; `RecordingPorts` is a fake of the queue layer's ports that records what
the one exit published and sent. Faults are injected into the merge through a join
whose `pages()` fails.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
import redis

from tasks.engines.resident import ResidentEngines
from tasks.errors import PdfEncrypted, TransientError
from tasks.lifecycle.cancel import ALREADY_ENDED, CANCELLED, cancel_job, end_cancelled_document
from tasks.lifecycle.claim_holders import holder_name
from tasks.lifecycle.fanout import record_page, run_pdf_page
from tasks.lifecycle.inputs import decode_request
from tasks.lifecycle.job_exit import JobEnder
from tasks.lifecycle.jobs import FanOut, JobPorts, process_job
from tasks.lifecycle.open_documents import OpenDocumentCache
from tasks.pipeline.documents import deadline_page
from tasks.records.jobs import DocumentMeta, Job, JobStatus, Outcome, ResultRecord
from tasks.records.redis_target import RedisTarget
from tasks.records.request import JobRequest
from tasks.records.results import DocumentResult, PageRecord
from tasks.settings import Settings
from tasks.state.callback_outbox import CallbackOutbox, Delivery
from tasks.state.connection import connect
from tasks.state.job_control import JobControl
from tasks.state.join import DocumentJoin
from tasks.state.stores import BlobStore, OutputStore, ResultCache, Stores
from tests.harness import FAST_PAGES, corpus, eventually, fake_env
from tests.pdf_fixtures import image_pdf, plain_pages


@dataclass
class RecordingPorts:
    """Fake `EndingPorts`: records instead of storing in Celery."""

    published: list[Outcome] = field(default_factory=list)
    recorded: list[Outcome] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)

    def result_record(self, outcome: Outcome) -> ResultRecord | None:
        return None  # every ending stored through `publish`, recorded

    def publish(self, outcome: Outcome) -> None:
        self.published.append(outcome)

    def tell(self, outcome: Outcome) -> None:
        self.published.append(outcome)

    def told_by_claim(self, outcome: Outcome) -> None:
        return None  # never asked: no ending's record is stored by the claim here

    def waits_for_replicas(self) -> bool:
        return False

    def keep(self, outcome: Outcome) -> None:
        self.kept.append(outcome.job_id)

    def record(self, outcome: Outcome) -> None:
        self.recorded.append(outcome)


class FailingJoin(DocumentJoin):
    """A join whose `pages()` raises the queued errors first (fault injection)."""

    def __init__(self, client: redis.Redis, ttl: int, errors: list[BaseException]) -> None:
        super().__init__(client, ttl)
        self.errors = errors

    def pages(self, doc_id: str) -> list[PageRecord]:
        if self.errors:
            raise self.errors.pop(0)
        return super().pages(doc_id)


@dataclass
class Life:
    settings: Settings
    stores: Stores
    join: DocumentJoin
    ender: JobEnder
    ports: RecordingPorts
    engines: ResidentEngines
    client: redis.Redis


def make_life(redis_url: str, errors: list[BaseException] | None = None) -> Life:
    settings = Settings.from_env(fake_env(
        cache=True, **FAST_PAGES, REDIS_URL=redis_url, OCR_AUTO_ROTATE="0",
        OCR_SKIP_BLANK_PAGES="0",  # the fake pages are plain (blank) on purpose
        OCR_CALLBACK_ALLOWED_HOSTS="127.0.0.1"))
    client = connect(RedisTarget(redis_url))
    client.flushdb()  # each test starts from an empty store (the cache included)
    control = JobControl(client, 600)
    stores = Stores(BlobStore(client, 600), ResultCache(client, 600), OutputStore(client, 600),
                    control)
    join = FailingJoin(client, 600, errors or [])
    ports = RecordingPorts()
    return Life(settings, stores, join, JobEnder(control, join, ports), ports,
                ResidentEngines(settings=settings, primary="fake"), client)


@pytest.fixture
def life(redis_url: str) -> Iterator[Life]:
    made = make_life(redis_url)
    yield made
    made.engines.unload()


def callbacks(life: Life) -> list[Delivery]:
    """The callbacks the job endings wrote into the outbox, by id."""
    return CallbackOutbox(life.client, 600).waiting()


def request_for(data: bytes, settings: Settings, **options: Any) -> JobRequest:
    kwargs = {"data_b64": base64.b64encode(data).decode(), "filename": "doc.pdf",
              "callback_task": "billing.done", "callback_url": "http://127.0.0.1:9/x",
              **options}
    return decode_request(kwargs, settings)


def run_job(job_id: str, request: JobRequest, life: Life, started: float | None = None,
            **ports: Any) -> Outcome | FanOut:
    """`process_job` as `ocr.document` calls it: the job routed to its engine first."""
    job = Job(job_id, request, life.engines.for_job(request.engine, request.lang),
              time.time() if started is None else started)
    return process_job(job, life.settings, life.engines, life.stores, JobPorts(**ports))


def fan_out(life: Life, job_id: str, data: bytes, **options: Any) -> DocumentMeta:
    """What `ocr.document` does for a scanned PDF, minus enqueueing the page tasks."""
    work = run_job(job_id, request_for(data, life.settings, **options), life)
    assert isinstance(work, FanOut)
    meta = replace(work.meta, page_tasks=[f"{job_id}-p{n}" for n in work.meta.ocr_pages],
                   reply_queue="ocr-fake")
    life.join.start(meta, work.text_pages)
    return meta


def read_page(life: Life, meta: DocumentMeta, number: int, docs: OpenDocumentCache) -> bool:
    described = meta.describe([number])
    page = run_pdf_page(described, life.engines, docs, life.settings, life.stores)
    return record_page(described, page, life.join, life.ender, life.settings, life.stores)


def doc_keys(life: Life, job_id: str) -> list[bytes]:
    return list(life.client.scan_iter(f"ocr:doc:{job_id}:*"))


def test_the_splitting_process_reads_its_pages_without_reading_the_pdf_again(
        life: Life, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task that fans a PDF out leaves its bytes to its own process's page tasks."""
    meta = fan_out(life, "job-shared", image_pdf(plain_pages(2)))
    reads: list[str] = []
    read = life.stores.blobs.get

    def counted(key: str, *args: Any, **kwargs: Any) -> bytes:
        reads.append(key)
        return read(key, *args, **kwargs)

    monkeypatch.setattr(life.stores.blobs, "get", counted)
    docs = OpenDocumentCache()
    assert [read_page(life, meta, n, docs) for n in meta.ocr_pages] == [False, True]
    docs.close()
    assert reads == []
    assert life.ports.published[0].status is JobStatus.SUCCESS


def test_pages_in_any_order_and_twice_end_the_document_once(life: Life) -> None:
    meta = fan_out(life, "job-order", image_pdf(plain_pages(5)))
    order = [*meta.ocr_pages, 2, 4]  # pages 2 and 4 delivered twice (at least once)
    random.Random(7).shuffle(order)
    docs = OpenDocumentCache()
    ended = [read_page(life, meta, n, docs) for n in order]
    docs.close()
    assert ended.count(True) == 1 and len(life.ports.published) == 1
    outcome = life.ports.published[0]
    assert outcome.status is JobStatus.SUCCESS and outcome.result is not None
    assert [p.number for p in outcome.result.pages] == [1, 2, 3, 4, 5]
    assert all(p.text.startswith("fake ") for p in outcome.result.pages)
    # one exit: callbacks once, one record, the join and the input freed
    http, task = callbacks(life)
    assert task.target == "billing.done" and len(life.ports.recorded) == 1
    assert http.target == "http://127.0.0.1:9/x" and http.body["pages_done"] == 5
    assert doc_keys(life, "job-order") == []
    assert not life.client.exists(meta.request.blob or "")


def test_cancel_keeps_the_pages_done_and_wins_over_later_pages(life: Life) -> None:
    meta = fan_out(life, "job-cancel", image_pdf(plain_pages(4)))
    docs = OpenDocumentCache()
    read_page(life, meta, 1, docs)
    read_page(life, meta, 2, docs)
    stopped: list[list[str]] = []
    assert cancel_job("job-cancel", life.stores.control, life.join, life.ender,
                      stopped.append) == CANCELLED
    assert stopped == [["job-cancel", *meta.page_tasks]]
    assert read_page(life, meta, 3, docs) is False  # a page still running ends nothing
    docs.close()
    outcome = life.ports.published[-1]
    assert outcome.status is JobStatus.CANCELLED and outcome.result is not None
    assert [p.number for p in outcome.result.pages] == [1, 2]
    assert len(life.ports.published) == 1
    assert [d.kind for d in callbacks(life)] == ["http", "task"]
    assert cancel_job("job-cancel", life.stores.control, life.join, life.ender,
                      stopped.append) == ALREADY_ENDED


def test_transient_error_in_the_merge_gives_the_claim_back(redis_url: str) -> None:
    life = make_life(redis_url, errors=[TransientError("Redis restarted")])
    meta = fan_out(life, "job-transient", image_pdf(plain_pages(2)))
    docs = OpenDocumentCache()
    assert read_page(life, meta, 1, docs) is False
    with pytest.raises(TransientError):
        read_page(life, meta, 2, docs)  # the page task retries it
    assert life.ports.published == [] and not life.ender.has_ended("job-transient")
    assert read_page(life, meta, 2, docs) is True  # the retry
    docs.close()
    assert [o.status for o in life.ports.published] == [JobStatus.SUCCESS]
    life.engines.unload()


def test_unexpected_error_in_the_merge_ends_the_job_as_internal_error(
        redis_url: str) -> None:
    life = make_life(redis_url, errors=[KeyError("secret page text")])
    meta = fan_out(life, "job-bug", image_pdf(plain_pages(2)))
    docs = OpenDocumentCache()
    read_page(life, meta, 1, docs)
    assert read_page(life, meta, 2, docs) is True
    docs.close()
    [outcome] = life.ports.published
    assert outcome.status is JobStatus.FAILURE and outcome.error is not None
    assert outcome.error.code == "internal_error"
    assert outcome.public()["error"]["message"] == "unexpected KeyError"  # no text leaks
    assert [d.id for d in callbacks(life)] == ["job-bug.FAILURE.http", "job-bug.FAILURE.task"]
    assert doc_keys(life, "job-bug") == []
    life.engines.unload()


def test_the_password_is_never_stored(life: Life) -> None:
    pdf = corpus("edge_encrypted_pw_openpassword.pdf").read_bytes()
    meta = fan_out(life, "job-secret", pdf, password="openpassword", mode="ocr")
    assert meta.request.password is None and meta.encrypted
    for key in life.client.scan_iter("ocr:*"):
        if life.client.type(key) == b"string":
            assert b"openpassword" not in life.client.get(key)  # type: ignore[operator]
    docs = OpenDocumentCache()
    assert read_page(life, meta, 1, docs) is True  # pages read from the decrypted copy
    docs.close()


def test_a_cached_result_of_an_encrypted_pdf_needs_its_password(life: Life) -> None:
    pdf = corpus("edge_encrypted_pw_openpassword.pdf").read_bytes()
    meta = fan_out(life, "job-first", pdf, password="openpassword", mode="ocr")
    docs = OpenDocumentCache()
    assert read_page(life, meta, 1, docs) is True
    docs.close()
    assert life.ports.published[-1].status is JobStatus.SUCCESS
    for password in (None, "wrong"):
        with pytest.raises(PdfEncrypted):
            run_job("job-again", request_for(pdf, life.settings, password=password,
                                             mode="ocr"), life)
    hit = run_job("job-right", request_for(pdf, life.settings, password="openpassword",
                                           mode="ocr"), life)
    assert isinstance(hit, Outcome) and hit.result is not None and hit.result.cached


# --- A job that has ended takes no late writes ----------------------------------------

ENDINGS = ("cancel", "deadline", "failure")


class HookedPorts(RecordingPorts):
    """Recording ports that run `during` once as the first outcome is published.

    Publishing comes after the end claim and before the join is freed: the moment a
    page finishing just as its job ends meets.
    """

    def __init__(self, during: Any = None) -> None:
        super().__init__()
        self.during = during

    def publish(self, outcome: Outcome) -> None:
        super().publish(outcome)
        hook, self.during = self.during, None
        if hook is not None:
            hook()


def end_document(life: Life, meta: DocumentMeta, ending: str) -> None:
    """End a fanned-out document the way a cancel, a deadline or a failure does."""
    if ending == "cancel":
        cancel_job(meta.job_id, life.stores.control, life.join, life.ender, lambda ids: None)
    elif ending == "deadline":  # the pages not read by the deadline fail; the last merges
        for number in meta.ocr_pages[1:]:
            record_page(meta.describe([number]), deadline_page(number), life.join, life.ender,
                        life.settings, life.stores)
    else:  # a page task whose retries ran out ends the job (page_tasks.pdf_page)
        life.ender.end(Outcome.failed(meta.job_id, TransientError("Redis restarted"),
                                      meta.request, engine=meta.job.engine))


def read(number: int) -> PageRecord:
    return PageRecord(number, f"page {number}", confidence=90.0)


def begun(life: Life, meta: DocumentMeta, job_id: str) -> DocumentMeta:
    """A copy of `meta` as a new job, its first page recorded."""
    copy = replace(meta, job=replace(meta.job, id=job_id))
    assert life.join.start(copy, [])
    record_page(copy.describe(copy.ocr_pages[:1]), read(copy.ocr_pages[0]), life.join,
                life.ender, life.settings, life.stores)
    return copy


@pytest.mark.parametrize("ending", ENDINGS)
@pytest.mark.parametrize("late", ["while it ends", "after it ended"])
def test_a_page_finishing_after_its_job_ended_leaves_no_key(life: Life, ending: str,
                                                             late: str) -> None:
    meta = fan_out(life, "job-late", image_pdf(plain_pages(3)))
    job = begun(life, meta, "job-late")
    written: list[bool] = []

    def page_two() -> None:  # the page a killed or slow child finishes late
        written.append(record_page(job.describe([2]), read(2), life.join, life.ender,
                                   life.settings, life.stores))

    ports = HookedPorts(page_two if late == "while it ends" else None)
    life.ender = JobEnder(life.stores.control, life.join, ports)
    end_document(life, job, ending)
    if late == "after it ended":
        page_two()
    assert written == [False]  # ended nothing
    assert len(ports.published) == 1 and len(ports.recorded) == 1
    expected = {"cancel": JobStatus.CANCELLED, "deadline": JobStatus.PARTIAL,
                "failure": JobStatus.FAILURE}[ending]
    assert ports.published[0].status is expected
    assert doc_keys(life, "job-late") == []
    # a write that comes after the ending writes nothing, also the document's start
    assert life.join.start(job, [read(1)]) is False and doc_keys(life, "job-late") == []


@pytest.mark.parametrize("ending", ENDINGS)
def test_late_pages_racing_the_ending_leave_nothing_behind(life: Life, ending: str) -> None:
    """The race of a page's record with its job's ending, run many times over."""
    meta = fan_out(life, "job-race", image_pdf(plain_pages(3)))
    ports = HookedPorts()
    life.ender = JobEnder(life.stores.control, life.join, ports)
    runs = 150

    def page_two(job: DocumentMeta, gate: threading.Barrier) -> bool:
        gate.wait()
        return record_page(job.describe([2]), read(2), life.join, life.ender, life.settings,
                           life.stores)

    with ThreadPoolExecutor(1) as pool:
        for run in range(runs):
            job = begun(life, meta, f"job-race-{run}")
            gate = threading.Barrier(2)
            late = pool.submit(page_two, job, gate)
            gate.wait()
            end_document(life, job, ending)
            late.result()  # raises what the page raised
            assert doc_keys(life, job.job_id) == [], f"run {run}: a late page left its keys"
    # every job ended exactly once (the page, when it completed the document, or the ending)
    assert len(ports.published) == runs and len(ports.recorded) == runs
    assert len({o.job_id for o in ports.published}) == runs


def test_a_cancel_met_by_a_page_while_the_pdf_was_split_ends_it(life: Life) -> None:
    """The cancel found no document (not yet split); its first page task ends it."""
    meta = fan_out(life, "job-split", image_pdf(plain_pages(3)))
    life.join.cleanup("job-split")  # as if the cancel came before the split's write
    stopped: list[list[str]] = []
    assert cancel_job("job-split", life.stores.control, life.join, life.ender,
                      stopped.append) == CANCELLED
    assert stopped == [["job-split"]] and not life.ender.has_ended("job-split")
    assert life.join.start(meta, [])  # the splitting task was not stopped in time
    assert end_cancelled_document(meta, life.join, life.ender) is True
    assert end_cancelled_document(meta, life.join, life.ender) is False  # the next page
    assert [o.status for o in life.ports.recorded] == [JobStatus.CANCELLED]
    assert doc_keys(life, "job-split") == []


def test_a_claim_names_its_holder_until_the_ending_is_done(life: Life) -> None:
    """The end claim names `<host>:<pid>` while its ending runs.

    `take_over` moves it once, and only from the holder named; a finished ending names
    no one, so nothing takes it over.
    """
    control, ender = life.stores.control, life.ender
    assert ender.claim("j1") and control.end_holder("j1") == holder_name()
    dead = holder_name(pid=999_999)
    assert not ender.take_over("j1", dead)  # the claim names another holder
    control.release_end("j1")
    assert control.claim_end("j1", dead)
    with ThreadPoolExecutor(4) as pool:  # four takers at once: one wins
        won = list(pool.map(lambda _: ender.take_over("j1", dead), range(4)))
    assert won.count(True) == 1 and control.end_holder("j1") == holder_name()
    ender.finish(Outcome("j1", JobStatus.CANCELLED, None, DocumentResult(
        status=JobStatus.CANCELLED, id="j1", filename="x.png")))
    assert control.end_holder("j1") is None and control.has_ended("j1")
    assert not ender.take_over("j1", holder_name())  # done: nothing to take over
    assert [o.job_id for o in life.ports.recorded] == ["j1"]


@pytest.mark.parametrize("cancelled", [False, True])
def test_a_claim_whose_ender_died_with_its_worker_is_taken_over_by_a_page(
        life: Life, cancelled: bool) -> None:
    """A page meets the claim of an ender gone with its host (not its last page).

    Its cancel is finished; any other ending is given back, the page recorded, and the
    page that completes the document merges it, once.
    """
    meta = fan_out(life, "job-dead", image_pdf(plain_pages(3)))
    ports = RecordingPorts()
    life.ender = JobEnder(life.stores.control, life.join, ports)
    job = begun(life, meta, "job-dead")  # page 1 recorded
    if cancelled:
        life.stores.control.cancel("job-dead")
    assert life.stores.control.claim_end("job-dead", holder_name(pid=999_999))
    ended = record_page(job.describe([2]), read(2), life.join, life.ender, life.settings,
                        life.stores)
    if cancelled:
        assert ended and [o.status for o in ports.published] == [JobStatus.CANCELLED]
        assert [p.number for p in ports.published[0].result.pages] == [1]
        return
    assert not ended and ports.published == []
    assert life.stores.control.end_holder("job-dead") is None
    assert life.join.done("job-dead") == 2
    assert record_page(job.describe([3]), read(3), life.join, life.ender, life.settings,
                       life.stores)
    assert [o.status for o in ports.published] == [JobStatus.SUCCESS]
    assert [p.number for p in ports.published[0].result.pages] == [1, 2, 3]


def test_gone_tells_a_killed_child_from_a_live_one() -> None:
    """A claim is taken over only from a child that is gone (a zombie or reaped)."""
    from tasks.lifecycle.claim_holders import gone as _gone

    assert not _gone(os.getpid())
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert not _gone(child.pid)
        child.kill()
        eventually(lambda: _gone(child.pid), 10, "the killed child seen as gone (a zombie)")
    finally:
        child.wait()
    assert _gone(child.pid)


def test_a_holder_is_judged_only_in_its_own_host_and_pid_namespace() -> None:
    """Containers sharing a host name (host networking) do not see each other's pids."""
    import socket

    from tasks.lifecycle.claim_holders import dead_local_holder, local_pid

    assert local_pid(holder_name(4321)) == 4321
    dead = 999_999
    assert dead_local_holder(holder_name(dead))
    for elsewhere in (f"{socket.gethostname()}:{dead}",  # another namespace, or an old claim
                      f"{socket.gethostname()}/1:{dead}", f"other-host:{dead}"):
        assert local_pid(elsewhere) is None and not dead_local_holder(elsewhere)


def test_an_ending_that_cannot_store_its_result_gives_its_claim_back(life: Life) -> None:
    """Storing the result fails (Redis restarting): the claim is released.

    The task's retry then ends the job instead of finding it "already ended".
    """

    class Unreachable(RecordingPorts):
        def publish(self, outcome: Outcome) -> None:
            raise TransientError("the result backend is unreachable")

    ender = JobEnder(life.stores.control, life.join, Unreachable())
    outcome = Outcome("j2", JobStatus.SUCCESS, None, DocumentResult(
        status=JobStatus.SUCCESS, id="j2", filename="x.png"))
    with pytest.raises(TransientError):
        ender.end(outcome)
    assert not life.stores.control.has_ended("j2")
    assert life.ender.end(outcome) and life.ports.published == [outcome]
