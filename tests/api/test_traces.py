"""One trace per job, from the HTTP request to the inference server and the callback.

Real processes, as the Procfile starts them: the API, a CPU worker with two pool
children (tesseract; OCR_LANG_ENGINES routes `eng` jobs to vlm-api, so its children read
such pages too) and a vlm-api worker (thread pool), all exporting traces over
OTLP/HTTP to a receiver of this test's own that decodes the protobuf the SDK sends
(tests/otlp_receiver.py); the inference server is the OpenAI-compatible simulator
(devkit/inference_server.py), which keeps the `traceparent` of every request it gets.
A 3-page PDF is sent to the API with a `traceparent` and a callback URL; the spans
that arrive must form one tree under that parent: the API's request, the job, three
pages, each page's engine read and its request to the server (the server saw the
same trace id, the request's own span as parent), the callback POST (whose receiver
saw the same), and the result's write.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devkit.inference_server import SimulatedInferenceServer
from devkit.receivers import CallbackReceiver
from tests.api_server import ApiServer, create_token, session
from tests.harness import Worker, eventually
from tests.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.pdf_fixtures import image_pdf, plain_pages

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"
PAGE_TEXT = "Page read by the simulated server."


@pytest.fixture(scope="module")
def collector() -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver().start()
    yield receiver
    receiver.stop()


@pytest.fixture(scope="module")
def server() -> Iterator[SimulatedInferenceServer]:
    simulator = SimulatedInferenceServer(text=PAGE_TEXT).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def env(collector: OtlpReceiver, server: SimulatedInferenceServer,
        receiver: CallbackReceiver) -> dict[str, str]:
    """What every process gets: the standard OTEL_* variables, the server, the hook."""
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # ms: spans leave soon after they end
            "OCR_VLM_API_URL": server.url, "OCR_VLM_API_MODEL": server.model,
            "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{receiver.port}",
            "OCR_CACHE_RESULTS": "0", "OCR_AUTO_ROTATE": "0", "OCR_DESKEW": "0",
            "OCR_SKIP_BLANK_PAGES": "0"}


@pytest.fixture(scope="module")
def workers(start_worker: Callable[..., Worker], env: dict[str, str]) -> list[Worker]:
    # The CPU worker alone consumes `ocr` (the job's queue); both consume `ocr-vlm-api`,
    # where the job's pages go.
    start_worker("control", **env)  # the callback outbox's sender
    cpu = start_worker(**env, OCR_ENGINE="tesseract", OCR_CONCURRENCY="2",
                       OCR_LANG_ENGINES="eng=vlm-api", OCR_QUEUES="ocr")
    vlm = start_worker(**env, OCR_ENGINE="vlm-api", OCR_VLM_API_IN_FLIGHT="4",
                       OCR_QUEUES="ocr-vlm-api")
    return [cpu, vlm]


@pytest.fixture(scope="module")
def api(start_api: Callable[..., ApiServer], env: dict[str, str],
        workers: list[Worker]) -> ApiServer:
    return start_api(**env)


def ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    """`span`'s parent, its parent's parent, ... up to the trace's first span here."""
    found = []
    while span.parent in by_id:
        span = by_id[span.parent]
        found.append(span)
    return found


def one(spans: list[ReceivedSpan], **want: str) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in want.items())]
    assert len(found) == 1, (want, [(s.name, s.kind, s.service) for s in spans])
    return found[0]


def test_one_trace_from_the_request_to_the_inference_server_and_the_callback(
        api: ApiServer, redis_url: str, workers: list[Worker], collector: OtlpReceiver,
        server: SimulatedInferenceServer, receiver: CallbackReceiver) -> None:
    # the API says it traces, as the workers do
    assert re.search(r"^api: tracing on: service ocr-api, exporting to otlp \(pid \d+\)$",
                     api.log(), re.M), api.log()[-2000:]
    http = session(create_token(redis_url, "tracer"))
    sent = http.post(f"{api.url}/v1/jobs", headers={"traceparent": TRACEPARENT},
                     files={"file": ("three.pdf", image_pdf(plain_pages(3)),
                                     "application/pdf")},
                     data={"lang": "eng", "callback_url": receiver.url("/")})
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]

    def finished() -> dict[str, Any] | None:
        answer = http.get(f"{api.url}/v1/jobs/{job}/result", params={"format": "json"})
        return answer.json() if answer.status_code == 200 else None

    result = eventually(finished, 180, lambda: f"job {job}: " + "\n".join(
        w.log()[-2000:] for w in workers))
    assert result["status"] == "SUCCESS", result
    assert [p["text"] for p in result["pages"]] == [PAGE_TEXT] * 3
    assert {p["engine"] for p in result["pages"]} == {"vlm-api"}
    assert result["trace_id"] == TRACE_ID  # the caller's trace, in the job's result
    eventually(lambda: receiver.posts, 60, "the callback POST")

    def logged() -> list[dict[str, Any]]:  # the ending logs its line after the result
        return [r for w in workers for r in map(json.loads, re.findall(
            r"ocr\.job (\{.*\})$", w.log(), re.M)) if r["id"] == job]

    lines = eventually(logged, 30, f"the ocr.job line of {job}")
    assert [r["trace_id"] for r in lines] == [TRACE_ID]

    # Every span ends up at the collector (each process exports on its own schedule:
    # a span's parent may come after it).
    def whole() -> list[ReceivedSpan] | None:
        spans = collector.trace(TRACE_ID)
        names = [s.name for s in spans]
        ids = {s.span_id for s in spans}
        return spans if ("ocr.callback" in names and names.count("ocr.read") == 3
                         and names.count("run/ocr.pdf_page") == 3
                         and all(s.parent in ids or s.parent == CALLER_SPAN
                                 for s in spans)) else None

    spans = eventually(whole, 60, lambda: str(sorted(
        (s.service, s.name) for s in collector.trace(TRACE_ID))))
    by_id = {s.span_id: s for s in spans}
    # One tree: every span's parent is in the trace, or is the caller's own span.
    assert all(s.parent in by_id or s.parent == CALLER_SPAN for s in spans), spans
    request = one(spans, parent=CALLER_SPAN)
    assert (request.service, request.kind) == ("ocr-api", "server")
    assert request.name.startswith("POST /v1/jobs")
    job_span = one(spans, name="run/ocr.document")
    assert (job_span.service, job_span.kind) == ("ocr-worker", "consumer")
    assert request in ancestors(job_span, by_id)
    pages = [s for s in spans if s.name == "run/ocr.pdf_page"]
    assert len(pages) == 3 and all(job_span in ancestors(p, by_id) for p in pages)
    reads = [s for s in spans if s.name == "ocr.read"]
    assert sorted(r.attributes["ocr.page"] for r in reads) == [1, 2, 3]
    for read in reads:
        assert by_id[read.parent] in pages  # each read inside its page's task
        assert read.attributes["ocr.engine"] == "vlm-api"
        assert read.attributes["ocr.language"] == "eng"
        assert read.attributes["ocr.finish_reason"] == "stop"
        assert read.attributes["ocr.generation_tokens"] == len(PAGE_TEXT.split())
        assert "ocr.fallback" not in read.attributes
    # The server's requests: the trace id it saw, and the client span that sent each.
    assert len(server.traceparents) == 3
    for header in server.traceparents:
        assert header is not None
        _, trace_id, parent, _ = header.split("-")
        assert trace_id == TRACE_ID
        sender = by_id[parent]
        assert sender.kind == "client" and sender.attributes.get("http.request.method",
                                                                 sender.attributes.get(
                                                                     "http.method")) == "POST"
        assert by_id[sender.parent] in reads  # sent by the page's engine read
    # The callback POST, sent after the last page: below the job's ending, as its
    # receiver saw.
    callback = one(spans, name="ocr.callback")
    assert callback.kind == "client" and job_span in ancestors(callback, by_id)
    assert callback.service == "ocr-control"  # the control worker sent it, no OCR child
    assert callback.attributes["http.response.status_code"] == 204
    sent, body = receiver.posts[0]
    headers = {k.lower(): v for k, v in sent.items()}
    assert json.loads(body)["id"] == job
    assert headers["traceparent"].split("-")[1:3] == [TRACE_ID, callback.span_id]
    write = one(spans, name="ocr.result.write")
    assert any(p in ancestors(write, by_id) for p in pages)  # the last page ended the job
    assert {s.service for s in spans} == {"ocr-api", "ocr-worker", "ocr-control"}
    # Each worker process said what it loaded at its start: the thread pool's vlm-api
    # engine, no language identifier (it takes no `lang`); each CPU child tesseract and it.
    cpu, vlm = workers
    assert re.search(r"ready in [\d.]+ s, loaded: vlm-api \(simulated-vlm, [\d.]+ s\)$",
                     vlm.log(), re.M)
    assert len(re.findall(r"loaded: tesseract \(eng, [\d.]+ s\), language identifier",
                          cpu.log())) == 2
