"""Units of what operators see: traces on and off, the latency histograms, queue ages, health.

Tracing is turned on only in subprocesses (its provider is process-wide), exporting to
this test's own OTLP receiver; the Redis-backed figures use the session's real Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from tasks import tracing
from tasks.broker.reads import PUBLISHED_HEADER
from tasks.metrics.fleet_metrics import DepthReads, FleetCollector
from tasks.metrics.metrics_collector import RedisCollector
from tasks.metrics.queue_depth import QueueDepth
from tasks.queue import cgroup_memory
from tasks.queue.app import sending_app
from tasks.queue.celery_config import celery_config
from tasks.settings import Settings
from tasks.state.metrics import PAGE_BUCKETS, MetricsStore
from tests.harness import ROOT, RedisServer, eventually, sent_past_the_gate
from tests.otlp_receiver import OtlpReceiver

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(*collectors: Collector) -> Samples:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    out: Samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, env={**clean, "PYTHONPATH": str(ROOT), **env})


# --- traces ----------------------------------------------------------------------------

def test_tracing_is_on_only_where_an_exporter_is_set() -> None:
    assert tracing.exporters({}) == []
    assert tracing.exporters({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}) == []
    assert tracing.exporters({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == ["otlp"]
    assert tracing.exporters({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}
                             ) == ["otlp"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "console"}) == ["console"]
    assert tracing.exporters({"OTEL_TRACES_EXPORTER": "none",
                              "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == []
    assert tracing.exporters({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) == []


def test_off_tracing_is_a_no_op_that_imports_nothing() -> None:
    done = python(
        "import sys\nfrom tasks import tracing\n"
        "assert tracing.start('t') is False and not tracing.enabled()\n"
        "with tracing.span('a', {'k': 1}) as one, tracing.span('b') as two:\n"
        "    one.set({'x': 2})\n    assert one is two\n"
        "headers = {}\ntracing.inject(headers)\nassert headers == {}\n"
        "assert tracing.current_trace_id() is None\n"
        "with tracing.continued('00-' + 'a' * 32 + '-' + 'b' * 16 + '-01'):\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_traceparent_values_and_celery_headers() -> None:
    good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert tracing.trace_id_of(good) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert tracing.trace_id_of(f" {good} ") == "4bf92f3577b34da6a3ce929d0e0e4736"
    for bad in (None, 7, "", "00-xyz", good.upper(), "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
                good + "-extra"):
        assert tracing.trace_id_of(bad) is None, bad

    class Request:
        traceparent = good
        headers = {"tracestate": "k=v", "other": "x"}

    assert tracing.headers_of(Request()) == {"traceparent": good, "tracestate": "k=v"}
    assert tracing.headers_of(None) == {}


def test_on_a_span_reaches_the_collector_with_its_attributes() -> None:
    receiver = OtlpReceiver().start()
    try:
        done = python(
            "from tasks import tracing\n"
            "assert tracing.start('ocr-test', celery=False)\n"
            "with tracing.continued('00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'):\n"
            "    with tracing.span('ocr.read', {'ocr.page': 3, 'skip': None}) as span:\n"
            "        span.set({'ocr.engine': 'tesseract'})\n"
            "        headers = {}\n        tracing.inject(headers)\n"
            "        print(tracing.current_trace_id(), headers['traceparent'])\n"
            "tracing.shutdown()\nassert not tracing.enabled()",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint)
        assert done.returncode == 0, done.stderr
        trace_id, sent = done.stdout.split()
        assert trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
        spans = eventually(lambda: receiver.trace(trace_id), 10, "the span")
        assert [(s.name, s.service, s.parent) for s in spans] == [
            ("ocr.read", "ocr-test", "00f067aa0ba902b7")]
        assert spans[0].attributes == {"ocr.page": 3, "ocr.engine": "tesseract"}
        assert sent.split("-")[2] == spans[0].span_id  # what goes out names the span
    finally:
        receiver.stop()


def test_a_client_that_does_not_trace_passes_a_traceparent_on(redis_url: str) -> None:
    """A job sent with a `traceparent` (the API's path): the header, as given."""
    from tasks.client import OcrClient

    client = OcrClient(Settings.from_env({"REDIS_URL": redis_url}))
    header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    before = time.time()
    job = sent_past_the_gate(client, {"blob": "ocr:blob:passing-on", "engine": "nowhere-e"},
                             traceparent=header)
    plain = sent_past_the_gate(client, {"blob": "ocr:blob:passing-on", "engine": "nowhere-e"},
                               traceparent="not a traceparent")
    from tasks.broker.layout import list_lane_key

    lane = list_lane_key("ocr-nowhere-e\x06\x163", client.client)  # the client's lane
    raw = redis.Redis.from_url(redis_url).lrange(lane, 0, -1)
    headers = {m["headers"]["id"]: m["headers"] for m in map(json.loads, raw)}
    assert headers[job]["traceparent"] == header
    assert "traceparent" not in headers[plain]  # refused, not passed on
    accepted = float(client._control.info(job)["accepted"])
    # the job's latency counts from here (stored to the millisecond)
    assert before - 0.001 <= accepted <= time.time()
    client.close()


def test_an_exporter_this_service_lacks_leaves_tracing_off_with_a_reason() -> None:
    for env in ({"OTEL_TRACES_EXPORTER": "zipkin"},
                {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                 "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}):
        done = python("import logging\nlogging.basicConfig()\nfrom tasks import tracing\n"
                      "print(tracing.start('t'))", **env)
        assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr
        assert "tracing off:" in done.stderr and "http/protobuf" in done.stderr


# --- histograms, queue ages, health ----------------------------------------------------

def test_latency_histograms_are_stored_and_served_cumulative(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    store = MetricsStore(client, "cpu@a")
    labels = {"engine": "tesseract"}
    store.add([], [("ocr_page_latency_seconds", labels, v) for v in (0.25, 0.3, 29.0, 900.0)])
    other = MetricsStore(client, "vlm@b")
    other.add(
        [("ocr_jobs_total", {"engine": "vlm-api", "outcome": "SUCCESS"}, 1.0)],
        [("ocr_job_latency_seconds", {"engine": "vlm-api", "outcome": "SUCCESS"}, 31.5)])
    store.flush()  # else written a second later
    other.flush()
    got = scrape(RedisCollector(client))
    buckets = {float(b["le"]): v for b, v in got["ocr_page_latency_seconds_bucket"]}
    assert list(buckets) == [*PAGE_BUCKETS, float("inf")]
    assert (buckets[0.2], buckets[0.3], buckets[20.0], buckets[30.0], buckets[600.0]) == (
        0.0, 2.0, 2.0, 3.0, 3.0)
    assert buckets[float("inf")] == 4.0
    assert got["ocr_page_latency_seconds_count"] == [(labels, 4.0)]  # no `node` label
    assert got["ocr_page_latency_seconds_sum"] == [(labels, 929.55)]
    assert got["ocr_job_latency_seconds_count"] == [
        ({"engine": "vlm-api", "outcome": "SUCCESS"}, 1.0)]
    assert client.ttl("ocr:metrics:histograms") > 0
    client.hset("ocr:metrics:histograms", "not json", "1")  # another version's field
    assert scrape(RedisCollector(client))["ocr_page_latency_seconds_count"][0][1] == 4.0


def _depth(client: redis.Redis, settings: Settings) -> QueueDepth:
    return QueueDepth(client, celery_config(settings)["broker_transport_options"])


def test_the_oldest_waiting_message_of_each_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = Settings.from_env({"REDIS_URL": redis_url})
    app = sending_app(settings)
    sent = time.time()
    # The transport stamps each message it publishes, at every priority.
    app.send_task("ocr.document", kwargs={}, queue="ocr-a", priority=6)
    app.send_task("ocr.document", kwargs={}, queue="ocr-a", priority=0)
    raw = client.lindex("ocr-a\x06\x166", -1)
    stamp = json.loads(raw)["headers"][PUBLISHED_HEADER]
    assert sent - 1 <= stamp <= time.time()
    depth = _depth(client, settings)
    ages = depth.oldest_ages(["ocr-a", "ocr-empty"], now=stamp + 100)
    assert ages["ocr-empty"] == 0.0 and 99 <= ages["ocr-a"] <= 101
    # A message from a client that stamps nothing counts from when it was first seen.
    client.lpush("ocr-b", json.dumps({"body": "", "headers": {},
                                      "properties": {"delivery_tag": "t-1"}}))
    assert depth.oldest_ages(["ocr-b"], now=1000.0) == {"ocr-b": 0.0}
    assert depth.oldest_ages(["ocr-b"], now=1030.0) == {"ocr-b": 30.0}
    client.rpop("ocr-b")
    client.lpush("ocr-b", json.dumps({"body": "", "headers": {},
                                      "properties": {"delivery_tag": "t-2"}}))
    assert depth.oldest_ages(["ocr-b"], now=1040.0) == {"ocr-b": 0.0}  # another message
    app.close()


def test_the_oldest_ages_a_consumer_records_and_the_exporter_reads(redis_url: str) -> None:
    """A worker looks at the messages; the exporter, which may only count them, reads that."""
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = Settings.from_env({"REDIS_URL": redis_url})
    app = sending_app(settings)
    worker, exporter = _depth(client, settings), _depth(client, settings)
    worker.record_oldest(client, ["ocr-a"], 60, now=1000.0)
    assert not client.exists("ocr:metrics:oldest")  # nothing waits: one EXISTS, no write
    app.send_task("ocr.document", kwargs={}, queue="ocr-a", priority=3,
                  headers={"ocr_client": "alice"})  # in alice's lane
    stamp = json.loads(client.lindex("{ocr-a\x06\x163}:lane:alice", -1))["headers"][
        PUBLISHED_HEADER]
    # waiting, no consumer looked yet: from when the exporter first saw it wait
    assert exporter.recorded_ages(client, ["ocr-a"], now=stamp + 5) == {"ocr-a": 0.0}
    assert exporter.recorded_ages(client, ["ocr-a"], now=stamp + 8) == {"ocr-a": 3.0}
    worker.record_oldest(client, ["ocr-a", "ocr-b"], 60, now=stamp + 10)
    assert 0 < client.ttl("ocr:metrics:oldest") <= 60
    ages = exporter.recorded_ages(client, ["ocr-a", "ocr-b"], now=stamp + 100)
    assert ages["ocr-b"] == 0.0 and ages["ocr-a"] == pytest.approx(100.0, abs=0.01)
    client.delete("{ocr-a\x06\x163}:lane:alice")  # taken
    assert exporter.recorded_ages(client, ["ocr-a"], now=stamp + 101) == {"ocr-a": 0.0}
    worker.record_oldest(client, ["ocr-a"], 60, now=stamp + 102)
    assert not client.hexists("ocr:metrics:oldest", "ocr-a")
    app.close()


def test_the_fleet_gauges_and_a_redis_that_went_away(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    settings = Settings.from_env({"REDIS_URL": redis_url})
    client.hset("ocr:workers", "cpu@a", json.dumps(
        {"queues": ["ocr", "ocr-control"], "expires": time.time() + 60}))
    client.lpush("ocr:dead-letter", "x", "y")
    client.set("ocr:dead-letter:count", 5)
    reads = DepthReads()
    reads.read(["ocr", "ocr-tesseract"], now=1234.0)
    fleet = FleetCollector(client, ["ocr", "ocr-tesseract"], _depth(client, settings),
                           reads=reads)
    got = scrape(fleet)
    assert got["ocr_redis_up"] == [({"redis": "store"}, 1.0)]
    assert got["ocr_redis_memory_used_bytes"][0][1] > 0
    assert {s[0]["queue"]: s[1] for s in got["ocr_queue_workers"]} == {
        "ocr": 1.0, "ocr-control": 1.0, "ocr-tesseract": 0.0}
    assert got["ocr_dead_letter_messages"] == [({}, 2.0)]
    assert got["ocr_dead_letters_total"] == [({}, 5.0)]
    assert got["ocr_queue_depth_read_timestamp_seconds"] == [
        ({"queue": "ocr,ocr-tesseract"}, 1234.0)]
    # A Redis that is gone: the scrape still answers, and says so.
    gone = RedisServer(tmp_path)
    gone.start()
    lost = redis.Redis.from_url(gone.url(), socket_connect_timeout=1)
    gone.stop()
    started = time.monotonic()
    got = scrape(FleetCollector(lost, ["ocr"], _depth(lost, settings)), RedisCollector(lost))
    assert time.monotonic() - started < 10
    assert got["ocr_redis_up"] == [({"redis": "store"}, 0.0)]
    assert "ocr_queue_oldest_age_seconds" not in got and "ocr_jobs_total" not in got


def test_the_memory_cgroup_of_a_container(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.current").write_text("900000000\n")
    (v2 / "memory.max").write_text("1000000000\n")
    (v2 / "memory.stat").write_text("anon 700000000\ninactive_file 100000000\n")
    assert cgroup_memory.usage_and_limit(v2) == (800000000, 1000000000)
    (v2 / "memory.max").write_text("max\n")
    assert cgroup_memory.usage_and_limit(v2) is None  # no limit: nothing to be near
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.usage_in_bytes").write_text("600\n")
    (v1 / "memory" / "memory.limit_in_bytes").write_text("1000\n")
    (v1 / "memory" / "memory.stat").write_text("total_inactive_file 100\n")
    assert cgroup_memory.usage_and_limit(v1) == (500, 1000)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    assert cgroup_memory.usage_and_limit(v1) is None
    assert cgroup_memory.usage_and_limit(tmp_path / "none") is None


def test_only_the_adapter_imports_opentelemetry() -> None:
    """Every other module of the service reaches traces through tasks/tracing.py."""
    users = sorted(str(p.relative_to(ROOT)) for folder in ("tasks", "scripts")
                   for p in (ROOT / folder).rglob("*.py")
                   if "import opentelemetry" in p.read_text(encoding="utf-8")
                   or "from opentelemetry" in p.read_text(encoding="utf-8"))
    assert users == ["tasks/tracing.py"]
