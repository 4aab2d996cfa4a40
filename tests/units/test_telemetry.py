"""Units of what people see: kwargs shown by Flower, job log lines, metrics in Redis."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.broker.layout import priority_suffixes
from tasks.errors import PdfEncrypted
from tasks.metrics.metrics_collector import RedisCollector
from tasks.queue.app import create_app
from tasks.queue.job_samples import job_line, job_record, page_samples
from tasks.queue.ocr_celery import job_kwargs_repr
from tasks.queue.telemetry import Telemetry, rss_bytes
from tasks.records.jobs import Outcome
from tasks.records.results import (
    DocumentResult,
    Fallback,
    PageError,
    PageRecord,
    VlmRead,
)
from tasks.records.status import JobStatus
from tasks.settings import Settings
from tasks.state.metrics import CHILD_TTL, FLUSH_EVERY, MetricsStore
from tasks.state.usage import JobPages, PageUsage, today
from tests.harness import RedisServer, eventually


def test_kwargs_repr_hides_payload_and_password() -> None:
    data = base64.b64encode(b"x" * 1001).decode()
    shown = job_kwargs_repr({"data_b64": data, "filename": "a.png", "password": "s3cret"})
    assert shown == "{'filename': 'a.png', 'data_b64': '<1001 bytes base64>', 'password': '***'}"
    assert job_kwargs_repr({"blob": "ocr:blob:abc12345"}) == "{'blob': 'ocr:blob:abc12345'}"
    assert len(job_kwargs_repr({"filename": "n" * 5000})) == 1024
    # A job's client first, then its file's name (Flower's task page, the worker's log).
    assert job_kwargs_repr({"blob": "ocr:blob:abc12345", "filename": "a.png"}, "billing") \
        == "{'client': 'billing', 'filename': 'a.png', 'blob': 'ocr:blob:abc12345'}"


def test_sent_job_message_carries_the_masked_repr(redis_url: str) -> None:
    app = create_app(Settings.from_env({"REDIS_URL": redis_url}))
    data = base64.b64encode(b"\x89PNG" + b"\0" * 996).decode()
    app.send_task("ocr.document", kwargs={"data_b64": data, "password": "s3cret-pw"},
                  queue="display-test", headers={"ocr_client": "billing"})
    client = redis.Redis.from_url(redis_url)
    message = json.loads(client.lpop("display-test") or b"{}")
    assert message["headers"]["kwargsrepr"] == ("{'client': 'billing', 'data_b64': "
                                                "'<1000 bytes base64>', 'password': '***'}")
    assert "s3cret" not in json.dumps(message["headers"])
    app.close()


def test_client_labels_are_token_names_anonymous_or_other(redis_url: str) -> None:
    from tasks.api.tokens import TokenStore
    from tasks.state.client_labels import ClientLabels

    store = redis.Redis.from_url(redis_url)
    labels = ClientLabels(store, refresh=3600)
    assert labels.label("") == "anonymous"
    assert labels.label("labels-billing") == "other"  # no such token (yet)
    TokenStore(store).create_client("labels-billing")
    # An unknown name reads the token names again (at most every MISS_SECONDS).
    eventually(lambda: labels.label("labels-billing") == "labels-billing", 10,
               "the new token's name as its label")
    assert labels.label("root") == "other"  # a login name is no token's


def test_a_name_that_keeps_missing_reads_the_token_names_ever_less_often(
        redis_url: str) -> None:
    """A login name is no token's: its misses back off to `refresh`, a new token's don't."""
    from tasks.api.tokens import TokenStore
    from tasks.state.client_labels import MISS_SECONDS, ClientLabels

    store = redis.Redis.from_url(redis_url)
    now = [1000.0]
    reads: list[float] = []

    class Counted(redis.Redis):
        def hkeys(self, name: str) -> Any:
            reads.append(now[0])
            return super().hkeys(name)

    labels = ClientLabels(Counted.from_url(redis_url), refresh=30, clock=lambda: now[0])
    for _ in range(120):  # a job of login name `root` every second, for two minutes
        assert labels.label("root") == "other"
        now[0] += 1
    gaps = [b - a for a, b in zip(reads, reads[1:], strict=False)]
    assert gaps[:4] == [MISS_SECONDS, 2 * MISS_SECONDS, 4 * MISS_SECONDS, 8 * MISS_SECONDS]
    assert set(gaps[4:]) == {30}, gaps  # then once a refresh
    # a token made a moment ago is still found within MISS_SECONDS of its first job
    TokenStore(store).create_client("labels-fresh")
    now[0] += MISS_SECONDS
    assert labels.label("labels-fresh") == "labels-fresh"


def test_job_record_of_results_and_failures() -> None:
    result = {"status": "PARTIAL", "engine": {"name": "tesseract"}, "cached": False,
              "pages": [{"number": 1, "source": "text-layer"}, {"number": 2, "source": "ocr"},
                        {"number": 3, "source": "ocr", "error": {"code": "timeout"}}],
              "failed_pages": [{"number": 3, "code": "timeout"}]}
    record, samples = job_record("j1", "cpu@h", "a.pdf", "auto", 1.5, result,
                                 "scanner-7", "other")
    assert record == {"id": "j1", "node": "cpu@h", "client": "scanner-7", "filename": "a.pdf",
                      "pages": 3, "engine": "tesseract", "seconds": 1.5,
                      "outcome": "PARTIAL", "code": None, "cached": False,
                      "failed_pages": 1}
    assert ("ocr_jobs_total", {"engine": "tesseract", "outcome": "PARTIAL"}, 1.0) in samples
    # Per client, under its bounded label (tasks/state/client_labels.py).
    assert ("ocr_client_jobs_total", {"client": "other", "outcome": "PARTIAL"}, 1.0) in samples
    # Pages are counted where they were read (page_samples), never at the job's end.
    assert not [s for s in samples if s[0] == "ocr_pages_total"]
    assert page_samples("tesseract", result["pages"]) == [  # sorted by source
        ("ocr_pages_total", {"engine": "tesseract", "source": source}, 1.0)
        for source in ("failed", "ocr", "text-layer")]
    assert page_samples("fake", [{"source": "ocr"}] * 2, cached=True) == [
        ("ocr_pages_total", {"engine": "fake", "source": "cached"}, 2.0)]
    assert page_samples("fake", []) == []
    record, samples = job_record("j3", "n", "x\ny.png", "fake", None, PdfEncrypted())
    assert (record["outcome"], record["code"], record["pages"]) == ("FAILURE", "pdf_encrypted",
                                                                    None)
    cancelled, samples = job_record("j4", "n", "c.png", "fake", None, "CANCELLED")
    assert (cancelled["outcome"], cancelled["code"]) == ("CANCELLED", None)
    assert ("ocr_jobs_total", {"engine": "fake", "outcome": "CANCELLED"}, 1.0) in samples
    line = job_line(record)
    assert "\n" not in line and json.loads(line.removeprefix("ocr.job "))["filename"] == \
        "x\ny.png"
    assert rss_bytes() > 10 * 2**20


def _scrape(collector: RedisCollector) -> dict[str, list[tuple[dict[str, str], float]]]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def test_a_busy_process_writes_each_counter_once_a_second(redis_url: str) -> None:
    """Increments within FLUSH_EVERY s are held and written as one HINCRBYFLOAT a field."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = MetricsStore(client, "cpu@a")
    job = ("ocr_jobs_total", {"engine": "fake", "outcome": "SUCCESS"}, 1.0)
    latency = ("ocr_job_latency_seconds", {"engine": "fake", "outcome": "SUCCESS"}, 0.2)
    client.config_resetstat()
    for _ in range(21):
        store.add([job], [latency])
    assert "cmdstat_hincrbyfloat" not in client.info("commandstats")  # held

    def jobs() -> float:
        got = _scrape(RedisCollector(client))
        return sum(v for _, v in got.get("ocr_jobs_total", []))

    eventually(lambda: jobs() == 21, FLUSH_EVERY + 10, lambda: f"21 jobs: {jobs()}")
    calls = client.info("commandstats")["cmdstat_hincrbyfloat"]["calls"]
    assert calls == 3, calls  # the counter, the bucket and the sum, once each
    got = _scrape(RedisCollector(client))
    assert [v for _, v in got["ocr_job_latency_seconds_count"]] == [21.0]
    store.add([job])  # held again; a process that ends writes it at once
    store.flush()
    assert jobs() == 22


def _hincrbyfloats(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_hincrbyfloat", {}).get("calls", 0))


def test_page_counts_are_merged_by_field_and_written_as_few_commands(
        redis_url: str) -> None:
    """N pages' increments (page tasks', and job tasks' with the usage) in 4 commands."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    telemetry = Telemetry(Settings.from_env({"REDIS_URL": redis_url}), "fake")
    telemetry.node = "cpu@a"
    telemetry.pages_read("fake", [{"number": 1, "source": "ocr", "seconds": 0.2}])
    client.config_resetstat()  # the usage's first write made
    pages = 12
    for n in range(2, pages + 2):
        page = {"number": n, "source": "ocr", "seconds": 0.2}
        if n % 2:  # a page task's: its usage left to its record script
            counted = telemetry.pages_read("fake", [page], job="job-1", recorded=True)
            assert counted == JobPages("", "job-1", (n,), today(), (("fake",),))
        else:  # a job task's: the usage written at once, the counters held
            telemetry.pages_read("fake", [page])
    assert PageUsage(client).used("") == (pages // 2 + 1,) * 2  # the first call too

    def read() -> float:
        got = _scrape(RedisCollector(client))
        return sum(v for _, v in got.get("ocr_client_pages_total", []))

    eventually(lambda: read() == pages + 1, FLUSH_EVERY + 10,
               lambda: f"{pages + 1} pages: {read()}")
    got = _scrape(RedisCollector(client))
    assert got["ocr_pages_total"] == [({"node": "cpu@a", "engine": "fake", "source": "ocr"},
                                       pages + 1.0)]
    assert [v for _, v in got["ocr_page_latency_seconds_count"]] == [pages + 1.0]
    # 4 fields (a counter each, a bucket and the sum), once each: not 4 per page
    assert _hincrbyfloats(client) == 4, client.info("commandstats")


def test_held_counts_reach_redis_within_a_second_with_no_other_write(
        redis_url: str) -> None:
    """The timer thread writes what is held FLUSH_EVERY s after the first of it came."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = MetricsStore(client, "cpu@a")
    page = ("ocr_pages_total", {"engine": "fake", "source": "ocr"}, 1.0)
    store.add([page])
    written = time.monotonic()
    store.add([page], [("ocr_page_latency_seconds", {"engine": "fake"}, 0.3)])
    store.add([page])
    assert client.hlen("ocr:metrics:histograms") == 0 and client.hlen(
        "ocr:metrics:node:cpu@a") == 0  # held

    def pages() -> float:
        return sum(v for _, v in _scrape(RedisCollector(client)).get("ocr_pages_total", []))

    eventually(lambda: pages() == 3, FLUSH_EVERY + 10, lambda: f"3 pages: {pages()}",
               interval=0.02)
    waited = time.monotonic() - written
    assert 0.8 * FLUSH_EVERY <= waited <= 2 * FLUSH_EVERY, waited  # held about a second
    assert client.hlen("ocr:metrics:histograms") == 2  # the bucket and the sum


def test_counts_a_failed_write_did_not_make_are_written_by_the_next(
        redis_url: str, tmp_path: Path) -> None:
    """A field Redis refused, or a pipeline that never got through, is held again."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = MetricsStore(client, "cpu@a")
    jobs = ("ocr_jobs_total", {"engine": "fake", "outcome": "SUCCESS"}, 1.0)
    loads = ("ocr_engine_loads_total", {"engine": "fake"}, 1.0)
    jobs_field = json.dumps(list(jobs[:2]), sort_keys=True)
    client.hset("ocr:metrics:node:cpu@a", jobs_field, "not a number")
    store.add([jobs, loads])
    with pytest.raises(redis.ResponseError):
        store.flush()  # one field refused, the other in
    client.hdel("ocr:metrics:node:cpu@a", jobs_field)
    store.add([jobs, loads])
    store.flush()
    loads_field = json.dumps(list(loads[:2]), sort_keys=True)
    got = {k.decode(): float(v) for k, v in client.hgetall("ocr:metrics:node:cpu@a").items()}
    assert got == {jobs_field: 2.0, loads_field: 2.0}

    down = RedisServer(tmp_path)
    down.start()
    lone = redis.Redis.from_url(down.url(), retry=Retry(NoBackoff(), 0))
    store = MetricsStore(lone, "cpu@b")
    down.stop()
    store.add([jobs, loads])
    with pytest.raises(redis.ConnectionError):
        store.flush()
    store.add([jobs])  # held: the next write is a second away
    down.start()
    store.flush()
    got = {k.decode(): float(v) for k, v in lone.hgetall("ocr:metrics:node:cpu@b").items()}
    assert got == {jobs_field: 2.0, loads_field: 1.0}
    lone.close()
    down.stop()


def test_metrics_store_and_collector(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = MetricsStore(client, "cpu@a")
    store.add([("ocr_jobs_total", {"engine": "fake", "outcome": "SUCCESS"}, 1.0)] * 3)
    store.flush()  # else written a second later
    store.set_child(11, [("ocr_child_rss_bytes", {}, 5e6),
                         ("ocr_child_memory_bytes", {"kind": "mlx_active"}, 2e6)])
    store.set_child(12, [("ocr_child_rss_bytes", {}, 6e6)])
    other = MetricsStore(client, "vlm@b")
    other.add([("ocr_engine_loads_total", {"engine": "mlx-vlm"}, 1.0)])
    other.flush()
    client.lpush("ocr", "m1", "m2")
    client.lpush("ocr:9", "late")
    client.set("ocr-odd", "not a list")
    suffixes = priority_suffixes({"sep": ":", "priority_steps": [0, 3, 6, 9]})
    assert suffixes == ("", ":3", ":6", ":9")
    got = _scrape(RedisCollector(client, ["ocr", "ocr-odd", "ocr-empty"], suffixes))
    assert got["ocr_jobs_total"] == [({"node": "cpu@a", "engine": "fake",
                                       "outcome": "SUCCESS"}, 3.0)]
    assert got["ocr_engine_loads_total"] == [({"node": "vlm@b", "engine": "mlx-vlm"}, 1.0)]
    assert sorted((s[0]["pid"], s[1]) for s in got["ocr_child_rss_bytes"]) == [
        ("11", 5e6), ("12", 6e6)]
    assert got["ocr_child_memory_bytes"] == [({"node": "cpu@a", "pid": "11",
                                               "kind": "mlx_active"}, 2e6)]
    assert {s[0]["queue"]: s[1] for s in got["ocr_queue_length"]} == {
        "ocr": 3.0, "ocr-odd": 0.0, "ocr-empty": 0.0}
    # the worker parent drops the gauges of a child that is gone
    store.keep_children([12])
    got = _scrape(RedisCollector(client))
    assert [s[0]["pid"] for s in got["ocr_child_rss_bytes"]] == ["12"]
    assert 0 < client.ttl("ocr:metrics:child:cpu@a:12") <= CHILD_TTL
    store.drop_child(12)
    assert "ocr_child_rss_bytes" not in _scrape(RedisCollector(client))
    client.hset("ocr:metrics:node:cpu@a", "not json", "1")  # another version's field
    assert _scrape(RedisCollector(client))["ocr_jobs_total"][0][1] == 3.0


def test_a_childs_gauges_are_rewritten_in_two_commands(redis_url: str) -> None:
    """After its first write, a child's gauges cost an HSET and an EXPIRE, no transaction.

    A gauge missing from the new set goes (one HDEL); a key its pid's earlier child left is
    replaced whole at the first write.
    """
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    key = "ocr:metrics:child:cpu@g:21"
    client.hset(key, "left by an earlier child of pid 21", "1")
    store = MetricsStore(client, "cpu@g")
    rss, tasks = ("ocr_child_rss_bytes", {}, 5e6), ("ocr_child_tasks", {}, 3.0)
    store.set_child(21, [rss, tasks])
    assert len(client.hkeys(key)) == 2
    client.config_resetstat()
    store.set_child(21, [rss, ("ocr_child_tasks", {}, 4.0)])
    store.set_child(21, [rss])
    calls = {name: int(stat["calls"]) for name, stat in client.info("commandstats").items()}
    assert calls == {"cmdstat_config|resetstat": 1, "cmdstat_hset": 2, "cmdstat_expire": 2,
                     "cmdstat_hdel": 1}, calls
    got = _scrape(RedisCollector(client))
    assert [s[1] for s in got["ocr_child_rss_bytes"]] == [5e6]
    assert "ocr_child_tasks" not in got
    assert 0 < client.ttl(key) <= CHILD_TTL


@pytest.mark.parametrize("status", ["SUCCESS", "PARTIAL", "CANCELLED"])
def test_a_jobs_line_from_its_brief_is_the_line_from_its_public_result(status: str) -> None:
    """`Outcome.brief` (the ending's line, its pages not encoded) reads as `public` does."""
    read = VlmRead(profile="p", image_size=(8, 8), prompt_tokens=5, generation_tokens=7,
                   finish_reason="length", tries=2)
    pages = [PageRecord(1, "a", engine="vlm", vlm=read,
                        fallback=Fallback(engine="tesseract", reason="length")),
             PageRecord(2, "", source="blank"),
             PageRecord(3, "", error=PageError(code="timeout", message="slow"))]
    result = DocumentResult.from_json({"status": status, "format": "png", "cached": False,
                                       "engine": {"name": "fake", "names": ["fake", "b"]},
                                       "pages": [p.to_json() for p in pages]})
    outcome = Outcome("j9", JobStatus(status), result=result)
    lines = [job_record("j9", "n", "f.png", "auto", 1.0, shown, "c", "other")
             for shown in (outcome.public(), outcome.brief())]
    assert lines[0] == lines[1]
    assert lines[0][0]["pages"] == 3 and lines[0][0]["engines"] == ["fake", "b"]
    assert lines[0][0]["vlm"]["generation_tokens"] == 7
    assert lines[0][0]["vlm"]["fallbacks"] == 1
    assert ("failed_pages" in lines[0][0]) == (status != "CANCELLED")
