"""The gate's rules without a service: priority, URLs, options, engines, jobs in flight.

tasks/admission.py's `admit` with `ClientRules` (a real redis-server for the books).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.admission import admit, check_job_url, check_result_target, priority_for
from tasks.errors import (
    BadRequest,
    EngineUnavailable,
    LanguageUnavailable,
    PageQuotaExceeded,
    PriorityNotAllowed,
    QuotaExceeded,
    UnknownEngine,
    UnknownLanguage,
    UrlNotAllowed,
)
from tasks.lifecycle.fetcher import Fetcher
from tasks.records.clients import ClientRules
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tasks.state.client_rules import rules_of
from tasks.state.keys import api_inflight_key
from tasks.state.liveness import _queues
from tasks.state.reservations import Reservations
from tasks.state.usage import PageCaps
from tasks.state.usage_counts import held_key
from tests.harness import make_client

req = JobRequest.for_door  # a door's request, as the gate takes it
SETTINGS = Settings.from_env({"OCR_ALLOWED_URLS": "s3://aaa/,s3://bbb/"})
LIVE = {"w1": {"ocr", "ocr-tesseract"}}


def test_a_job_naming_no_priority_gets_the_highest_its_client_may_use() -> None:
    assert priority_for(ClientRules("x"), None) == "normal"
    held = ClientRules("x", max_priority="batch")
    assert priority_for(held, None) == "batch"
    assert priority_for(ClientRules("x", max_priority="interactive"), None) == "normal"
    with pytest.raises(PriorityNotAllowed):
        priority_for(held, "normal")
    with pytest.raises(BadRequest):
        priority_for(ClientRules("x"), "urgent")


def test_every_url_lies_under_the_service_and_the_client_prefixes() -> None:
    b = ClientRules("b", allowed_urls=("s3://bbb/",))
    assert check_job_url("s3://bbb/doc.png", b, SETTINGS).url == "s3://bbb/doc.png"
    for rules, url in ((b, "s3://aaa/secret.png"), (ClientRules("x"), "s3://ccc/x.png")):
        with pytest.raises(UrlNotAllowed):
            admit(req({"url": url}), rules, SETTINGS, LIVE)
    with pytest.raises(UrlNotAllowed):
        admit(req({"url": "s3://bbb/x.png", "result_url": "s3://aaa/out/"}), b, SETTINGS, LIVE)
    # a client door whose own settings name no prefixes leaves it to the worker
    anywhere = Settings.from_env({})
    admit(req({"url": "s3://ccc/x.png"}), ClientRules("x"), anywhere, LIVE, service=False)
    with pytest.raises(UrlNotAllowed):
        admit(req({"url": "s3://ccc/x.png"}), ClientRules("x"), anywhere, LIVE)


def test_options_and_engines_are_refused_with_their_codes() -> None:
    rules = ClientRules("x")
    with pytest.raises(BadRequest):
        admit(req({"url": "s3://aaa/x.png", "output": "exe"}), rules, SETTINGS, LIVE)
    with pytest.raises(UnknownEngine):
        admit(req({"url": "s3://aaa/x.png", "engine": "nope"}), rules, SETTINGS, LIVE)
    with pytest.raises(EngineUnavailable):  # an engine of the registry no live worker runs
        admit(req({"url": "s3://aaa/x.png", "engine": "rapidocr"}), rules, SETTINGS, LIVE)
    taken = admit(req({"url": "s3://aaa/x.png", "engine": "tesseract"}), rules, SETTINGS, LIVE,
                  job_id="j")
    assert (taken.job_id, taken.queue, taken.priority) == ("j", "ocr-tesseract", "normal")
    assert not taken.in_flight and not taken.pages  # a door without the books holds nothing


def test_every_job_ocrclient_enqueues_passes_the_gate(own_redis_url: str) -> None:
    """A request enqueued without a reservation is admitted: refused, nothing is sent."""
    client = make_client(own_redis_url, OCR_ALLOWED_URLS="s3://aaa/")
    store = redis.Redis.from_url(own_redis_url)
    try:
        for kwargs, refused in (({"url": "s3://aaa/x.png", "lang": "klingon"}, UnknownLanguage),
                                ({"url": "s3://zzz/x.png"}, UrlNotAllowed),
                                ({"url": "s3://aaa/x.png", "engine": "nope"}, UnknownEngine)):
            with pytest.raises(refused):
                client.enqueue(req(kwargs))
        assert not store.keys("ocr:job:*")  # no record, no listing, no message
        sent = client.enqueue(req({"url": "s3://aaa/x.png", "lang": "eng"}), priority="batch")
        assert store.hget(f"ocr:job:{sent}", "priority") == b"batch"
    finally:
        client.close()


def test_jobs_in_flight_and_page_caps_are_reserved_at_the_door(own_redis_url: str) -> None:
    client = redis.Redis.from_url(own_redis_url)
    ended: set[str] = set()
    books = Reservations(client, 60, lambda ids: [i for i in ids if i in ended])
    rules = ClientRules("c", jobs_in_flight=2, pages_per_day=3)
    for job_id in ("batch-doc", "single"):
        taken = admit(req({"url": "s3://aaa/x.png"}), rules, SETTINGS, LIVE, books=books,
                      job_id=job_id)
        assert (taken.in_flight, taken.pages) == (True, 1)
        books.commit(taken)
    with pytest.raises(QuotaExceeded):
        admit(req({"url": "s3://aaa/x.png"}), rules, SETTINGS, LIVE, books=books, job_id="third")
    ended.add("batch-doc")  # one ended: room again, and it leaves the set and the holds
    admit(req({"url": "s3://aaa/x.png"}), rules, SETTINGS, LIVE, books=books, job_id="third")
    assert sorted(books.in_flight.open("c")) == ["single", "third"]
    with pytest.raises(PageQuotaExceeded):
        admit(req({"url": "s3://aaa/x.png", "pages": "1,2,3,4"}), rules, SETTINGS, LIVE,
              books=books, job_id="fourth")
    assert "fourth" not in books.in_flight.open("c")  # refused: nothing taken


def test_a_reservation_is_one_script_committed_or_released(own_redis_url: str) -> None:
    """Both the place and the hold, or neither; a release after a commit keeps both."""
    client = redis.Redis.from_url(own_redis_url)
    client.flushdb()
    books = Reservations(client, 60, lambda ids: [])
    caps = PageCaps(pages_per_day=5)
    sent = books.take("sent", "c", "ocr", "normal", limit=2, caps=caps, pages=2)
    books.commit(sent)
    books.release(sent)  # committed: nothing given back
    kept = books.take("kept", "c", "ocr", "normal", limit=2, caps=caps, pages=2)
    assert client.zcard(api_inflight_key("c")) == 2
    assert client.hgetall(held_key("c")) == {b"sent": b"2", b"kept": b"2"}
    with pytest.raises(PageQuotaExceeded):  # 4 held + 2 > 5: the place is not taken either
        books.take("over", "c", "ocr", "normal", limit=3, caps=caps, pages=2)
    with pytest.raises(QuotaExceeded):  # 2 in flight: the pages are not held either
        books.take("full", "c", "ocr", "normal", limit=2, caps=caps, pages=1)
    assert client.zcard(api_inflight_key("c")) == 2
    assert set(client.hkeys(held_key("c"))) == {b"sent", b"kept"}
    books.release(kept)  # not sent: its place and hold go
    assert client.zrange(api_inflight_key("c"), 0, -1) == [b"sent"]
    assert client.hgetall(held_key("c")) == {b"sent": b"2"}
    again = books.take("kept", "c", "ocr", "normal", limit=0, caps=None)
    assert (again.in_flight, again.pages) == (True, 0)  # no limit, no caps: a place alone
    client.config_resetstat()
    books.take("one", "c", "ocr", "normal", limit=3, caps=caps, pages=1)
    stats = client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 1  # the place and the hold: one script


def test_a_tokens_record_makes_its_rules() -> None:
    settings = Settings.from_env({"OCR_API_JOBS_IN_FLIGHT": "7"})
    rules = rules_of("b", {"allowed_urls": ["s3://bbb/"], "max_priority": "batch",
                           "jobs_in_flight": None, "batches": 2}, settings)
    assert rules == ClientRules("b", ("s3://bbb/",), "batch", 7, 2, None, None,
                                result_urls=("s3://bbb/",))
    assert rules_of("x", None, settings) == ClientRules.service_wide("x")
    # a token without prefixes has an empty list: it reads no URL and writes nowhere
    bare = rules_of("n", {"allowed_urls": None}, settings)
    assert bare.allowed_urls == () and bare.result_urls == ()


def test_a_client_without_prefixes_reads_no_url_but_the_shared_ones() -> None:
    """OCR_ALLOWED_URLS bounds what is read; it grants an API client nothing."""
    bare = rules_of("c", {"allowed_urls": None}, SETTINGS)
    b = rules_of("b", {"allowed_urls": ["s3://bbb/b/"]}, SETTINGS)
    answers = set()
    for url in ("s3://bbb/b/letter.png.ocr.pdf", "s3://bbb/b/no-such-object.png",
                "s3://aaa/golden/page.png"):
        with pytest.raises(UrlNotAllowed) as refused:
            admit(req({"url": url}), bare, SETTINGS, LIVE)
        answers.add((refused.value.code, refused.value.message))
        with pytest.raises(UrlNotAllowed):  # the worker's fetcher: the same rule
            Fetcher.for_client(SETTINGS, bare.allowed_urls).check(url)
    assert len(answers) == 1  # decided on the URL alone: the same for any object
    shared = Settings.from_env({"OCR_ALLOWED_URLS": "s3://aaa/,s3://bbb/",
                                "OCR_SHARED_READ_URLS": "s3://aaa/shared/,s3://zzz/"})
    assert check_job_url("s3://aaa/shared/form.png", bare, shared).url \
        == "s3://aaa/shared/form.png"
    assert Fetcher.for_client(shared, bare.allowed_urls).allowed == ("s3://aaa/shared/",)
    assert set(Fetcher.for_client(shared, b.allowed_urls).allowed) == {"s3://bbb/b/",
                                                                       "s3://aaa/shared/"}
    with pytest.raises(UrlNotAllowed):  # outside the bound: never read, shared or not
        check_job_url("s3://zzz/x.png", bare, shared)
    with pytest.raises(UrlNotAllowed):  # a shared prefix is read, never written
        check_result_target("s3://aaa/shared/out/", b, shared)
    # the operator's doors read under the bound
    assert Fetcher.for_client(SETTINGS, None).allowed == ("s3://aaa/", "s3://bbb/")
    check_job_url("s3://aaa/golden/page.png", ClientRules.service_wide("op"), SETTINGS)


def test_results_go_only_under_the_clients_own_prefixes_and_never_a_read_only_one() -> None:
    settings = Settings.from_env({"OCR_ALLOWED_URLS": "s3://aaa/,s3://bbb/",
                                  "OCR_READONLY_URLS": "s3://aaa/frozen/",
                                  "OCR_GOLDEN_SET": "s3://bbb/golden"})
    assert settings.readonly_prefixes == ("s3://aaa/frozen/", "s3://bbb/golden")
    bare = ClientRules("bare", result_urls=())          # a token without prefixes
    own = ClientRules("own", ("s3://aaa/",), result_urls=("s3://aaa/",))
    operator = ClientRules.service_wide("ops")          # submit.py, OcrClient
    refused = [(bare, "s3://aaa/x.txt", False),
               (own, "s3://bbb/x.txt", False),
               (own, "s3://aaa/frozen/x.txt", False),
               (operator, "s3://bbb/golden/a.gt.txt", False),
               (operator, "s3://bbb/golden", False),
               (operator, "s3://bbb/", True),      # a batch's target holding the golden set
               (own, "s3://aaa/frozen/", True),
               (own, "s3://aaa/", True)]
    for rules, url, batch in refused:
        with pytest.raises(UrlNotAllowed):
            check_result_target(url, rules, settings, batch=batch)
    # A job's own object or prefix beside them; the operator's anywhere else.
    for rules, url, batch in ((own, "s3://aaa/out/", False), (own, "s3://aaa/", False),
                              (own, "s3://aaa/out/", True), (operator, "s3://bbb/out/", True),
                              (operator, "s3://bbb/goldens/x.txt", False)):
        assert check_result_target(url, rules, settings, batch=batch).url == url
    # The fetcher's writes hold the same rule, whoever reached them.
    with pytest.raises(UrlNotAllowed):
        Fetcher.for_client(settings, None).check_result("s3://bbb/golden/a.gt.txt")
    with pytest.raises(UrlNotAllowed):
        Fetcher.for_client(settings, None).target("s3://bbb/")
    with pytest.raises(UrlNotAllowed):
        Fetcher.for_client(settings, None, ()).check_result("s3://aaa/out/x.txt")
    assert Fetcher.for_client(settings, None).target("s3://bbb/out/").url == "s3://bbb/out/"
    # A local golden set is no URL: nothing more is read-only.
    assert Settings.from_env({"OCR_GOLDEN_SET": "/srv/golden"}).readonly_prefixes == ()


def test_a_doors_request_crosses_the_wire_as_the_kwargs_the_task_decodes() -> None:
    """`to_kwargs` sends each argument not at its default; the task decodes the same."""
    door = req({"filename": "scan.pdf", "pages": "1-3", "output": "text", "lang": None,
                "no_cache": True, "escalate": "vlm-api", "escalate_below": 0.0})
    assert door.source == ""  # its input comes apart, stored as it is sent
    sent = door.stored_as("ocr:blob:abc")
    kwargs = sent.to_kwargs()
    assert kwargs == {"blob": "ocr:blob:abc", "filename": "scan.pdf", "pages": "1-3",
                      "no_cache": True, "escalate": "vlm-api", "escalate_below": 0.0}
    assert JobRequest.from_kwargs(kwargs, ["tesseract"]) == sent
    with pytest.raises(BadRequest):  # the task still wants one input
        JobRequest.from_kwargs(door.to_kwargs(), ["tesseract"])


def worker(queues: list[str], languages: dict[str, list[str] | None] | None) -> set[str]:
    """A live worker's queues as its presence record gives them."""
    record = {"queues": queues, "expires": 0}
    return _queues(json.dumps(record if languages is None else
                              {**record, "languages": languages}))


def test_a_language_no_live_worker_reads_is_refused_at_the_door() -> None:
    """Every door: `de` asks did you mean `deu`; `deu` that no worker has names OCR_LANGS."""
    english = {"w1": worker(["ocr", "ocr-tesseract", "ocr-rapidocr"],
                            {"tesseract": ["eng", "osd"], "rapidocr": ["chi_sim", "eng"]})}
    rules = ClientRules("x")
    with pytest.raises(UnknownLanguage) as raised:
        admit(req({"lang": "de"}), rules, SETTINGS, english)
    assert "'de': did you mean 'deu'?" in raised.value.message
    with pytest.raises(LanguageUnavailable) as missing:
        admit(req({"lang": "deu"}), rules, SETTINGS, english)
    assert missing.value.message == (
        'no live worker reads deu: add deu where the workers run: OCR_LANGS="eng deu" '
        "make run; nothing was sent")
    with pytest.raises(LanguageUnavailable):
        admit(req({"lang": "eng+deu"}), rules, SETTINGS, english)
    with pytest.raises(LanguageUnavailable):  # rapidocr reads no German either
        admit(req({"lang": "deu", "engine": "rapidocr"}), rules, SETTINGS, english)
    # read here: by the worker's engine, or by the engine its routing loads
    for asked in ({"lang": "eng"}, {"lang": "chi_sim"}, {"lang": "auto"}, {},
                  {"lang": "chi_sim", "engine": "rapidocr"}):
        admit(req(asked), rules, SETTINGS, english)
    with pytest.raises(LanguageUnavailable):  # tesseract named: its own languages
        admit(req({"lang": "chi_sim", "engine": "tesseract"}), rules, SETTINGS, english)
    # some live worker on the job's queue reads it: sent
    german = {**english, "w2": worker(["ocr", "ocr-tesseract"], {"tesseract": ["deu"]})}
    admit(req({"lang": "deu"}), rules, SETTINGS, german)
    # cannot tell: a VLM takes any language, a record naming none, no worker yet
    for live in ({"w1": worker(["ocr"], {"mlx-vlm": None})}, {"w1": worker(["ocr"], None)},
                 {}):
        admit(req({"lang": "deu"}), rules, SETTINGS, live)
    with pytest.raises(UnknownLanguage):  # no tesseract code, and no worker lists it
        admit(req({"lang": "klingon"}), rules, SETTINGS, {})
    own = {"w1": worker(["ocr"], {"tesseract": ["eng", "klingon"]})}
    admit(req({"lang": "klingon"}), rules, SETTINGS, own)  # an operator's own traineddata


def test_the_golden_sets_jobs_take_their_reservation_through_the_gate(
        own_redis_url: str, tmp_path: Path) -> None:
    """Its priority and queue are the gate's; a job the gate refuses is never sent."""
    from tasks.queue.golden import CLIENT, send_run

    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "a.gt.txt").write_text("a line")
    client = make_client(own_redis_url, OCR_GOLDEN_SET=str(tmp_path))
    store, asked = redis.Redis.from_url(own_redis_url), []

    def gate(request: JobRequest, rules: ClientRules, *args: Any, **kwargs: Any) -> Any:
        asked.append((rules.name, kwargs["priority"]))
        return admit(request, rules, *args, **kwargs)

    try:
        sent = send_run(client.settings, client.sender, client.put_input, LIVE, gate)
        (job_id,) = sent["jobs"]["tesseract"]
        assert asked == [(CLIENT, "batch")]
        record = store.hgetall(f"ocr:job:{job_id}")
        assert (record[b"priority"], record[b"queue"]) == (b"batch", b"ocr-tesseract")
        with pytest.raises(UnknownEngine):  # a fleet serving an engine this client lacks
            send_run(client.settings, client.sender, client.put_input,
                     {"w": {"ocr-tesseract"}}, lambda *a, **k: admit(
                         JobRequest.for_door({"engine": "nope"}), *a[1:], **k))
        assert len(store.keys("ocr:job:*")) == 1
    finally:
        client.close()


def test_an_api_jobs_urls_are_checked_by_the_gate_alone() -> None:
    """The API builds its request with its URLs parsed; `admit` decides where they lie."""
    from tasks.api._job_inputs import job_request
    from tasks.api._schemas import JobOptions

    options = JobOptions(url="s3://zzz/x.png", result_url="s3://zzz/out/")
    request = job_request(options, None, "", SETTINGS)
    assert (request.url, request.result_url) == ("s3://zzz/x.png", "s3://zzz/out/")
    with pytest.raises(UrlNotAllowed):
        admit(request, ClientRules("x"), SETTINGS, LIVE)
    with pytest.raises(BadRequest):  # what is no URL stays the request's own refusal
        job_request(JobOptions(url="ftp://zzz/x.png"), None, "", SETTINGS)
