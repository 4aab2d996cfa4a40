"""The vlm-api adapter's stream handling and fault mapping, with a fake (named) server.

`FakeOpenAI` stands in for the `openai` package: its client answers with scripted
chunks or raises the package's error types (their real classes, built without HTTP).
The real server is tests/engines/test_e2e_vlm_api.py's.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from tasks.engines.base import OcrEngine, PageResult, RecognizeOptions
from tasks.engines.resident import EnginePool, ResidentEngines
from tasks.engines.vlm.budget import PatchGrid
from tasks.engines.vlm.profiles import PROFILES
from tasks.engines.vlm.repetition import TextPieces
from tasks.engines.vlm.vlm_api_engine import VlmApiEngine, processor_grid
from tasks.errors import OcrError
from tasks.models.locate import served_model
from tasks.pipeline.pdf import open_pdf, render_page
from tasks.queue.celery_config import worker_app_config
from tasks.queue.retry_policy import MAX_RETRIES, max_retries
from tasks.settings import Settings
from tests.fake_engines import FakeEngine
from tests.pdf_fixtures import image_pdf

REQUEST = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")


def chunk(text: str | None = None, finish: str | None = None,
          usage: tuple[int, int] | None = None) -> Any:
    choices = [] if text is None and finish is None else [
        SimpleNamespace(delta=SimpleNamespace(content=text), finish_reason=finish)]
    return SimpleNamespace(choices=choices, usage=None if usage is None else
                           SimpleNamespace(prompt_tokens=usage[0], completion_tokens=usage[1]))


class FakeStream:
    def __init__(self, chunks: Iterator[Any]) -> None:
        self.chunks = chunks
        self.closed = False
        self.read = 0

    def __enter__(self) -> FakeStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def __iter__(self) -> Iterator[Any]:
        for item in self.chunks:
            self.read += 1
            if isinstance(item, BaseException):
                raise item
            yield item


class FakeClient:
    """`client.chat.completions.create(...)` answering from a script.

    `client.models.list()` (the server's liveness) fails `down_probes` times, then
    answers.
    """

    def __init__(self, answer: Any, down_probes: int = 0) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.models = SimpleNamespace(list=self.list_models)
        self.base_url = httpx.URL("http://127.0.0.1:1/v1")
        self.down_probes = down_probes
        self.probes = 0

    def list_models(self, **_: Any) -> list[str]:
        self.probes += 1
        if self.probes <= self.down_probes:
            raise openai.APIConnectionError(request=REQUEST)
        return ["served-model"]

    def answers(self) -> bool:
        """The engine's probe of this server (`list_models` standing in for GET /models)."""
        try:
            self.list_models()
        except openai.APIConnectionError:
            return False
        return True

    def create(self, **kwargs: Any) -> FakeStream:
        self.calls.append(kwargs)
        if isinstance(self.answer, BaseException):
            raise self.answer
        stream = FakeStream(iter(self.answer()))
        self.streams.append(stream)
        return stream


def engine(answer: Any, profile: str = "generic", tokens: int = 100, down_probes: int = 0,
           **env: str) -> VlmApiEngine:
    settings = Settings.from_env({"OCR_ENGINE": "vlm-api", "OCR_VLM_API_PROBE_SECONDS":
                                  "0.01", **env})
    client = FakeClient(answer, down_probes)
    return VlmApiEngine(client, openai, "served-model", "Read it.",
                        PROFILES[profile], longest_side=64, max_tokens=tokens,
                        temperatures=(0.0, 0.2), grid=PatchGrid(), settings=settings,
                        probe=client.answers)


def page() -> Image.Image:
    return Image.new("RGB", (120, 80), "white")


def status_error(code: int, body: Any = None) -> openai.APIStatusError:
    response = httpx.Response(code, request=REQUEST)
    cls = {400: openai.BadRequestError, 404: openai.NotFoundError,
           429: openai.RateLimitError}.get(code, openai.InternalServerError)
    return cls("the server's words", response=response, body=body)


def test_a_clean_read_takes_the_servers_usage_and_text() -> None:
    vlm = engine(lambda: [chunk("Hello "), chunk("world"), chunk(finish="stop"),
                          chunk(usage=(321, 2))])
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.text == "Hello world"
    assert result.vlm is not None
    assert (result.vlm.finish_reason, result.vlm.tries) == ("stop", 1)
    assert (result.vlm.prompt_tokens, result.vlm.generation_tokens) == (321, 2)
    call = vlm._client.calls[0]  # type: ignore[attr-defined]
    assert call["model"] == "served-model" and call["stream"] is True
    assert call["stream_options"] == {"include_usage": True} and call["max_tokens"] == 100
    image, text = call["messages"][0]["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")
    assert text == {"type": "text", "text": "Read it."}


def test_the_profile_orders_the_message_parts() -> None:
    """The prompt goes before the image for olmOCR (its pipeline does), after it otherwise."""
    for profile, first in (("olmocr", "text"), ("generic", "image_url"),
                           ("paddleocr-vl", "image_url")):
        parts = engine(list, profile=profile).messages(page())[-1]["content"]
        assert [part["type"] for part in parts][0] == first, profile


def test_a_read_cut_at_the_token_limit_is_tried_on_the_next_temperature() -> None:
    vlm = engine(lambda: [chunk("partial"), chunk(finish="length"), chunk(usage=(10, 100))])
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.text == "" and result.vlm is not None
    assert (result.vlm.finish_reason, result.vlm.tries) == ("length", 2)
    assert [c["temperature"] for c in vlm._client.calls] == [0.0, 0.2]  # type: ignore[attr-defined]


def test_a_loop_closes_the_stream_early() -> None:
    def looping() -> Iterator[Any]:
        while True:
            yield chunk(" the row")

    vlm = engine(looping, tokens=100_000)
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.vlm is not None and result.vlm.finish_reason == "repetition"
    streams = vlm._client.streams  # type: ignore[attr-defined]
    assert all(s.closed and s.read < 1000 for s in streams) and len(streams) == 2
    # No usage from the server: the text's pieces counted (" the", " row" a delta).
    assert result.vlm.generation_tokens == 2 * streams[-1].read


def test_a_finish_the_page_does_not_know_is_no_clean_read() -> None:
    vlm = engine(lambda: [chunk("I cannot"), chunk(finish="content_filter")])
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.text == "" and result.vlm is not None
    assert (result.vlm.finish_reason, result.vlm.tries) == ("error", 1)


def test_secrets_stay_out_of_the_settings_repr() -> None:
    settings = Settings.from_env({"OCR_VLM_API_KEY": "sk-very-secret",
                                  "OCR_CALLBACK_SECRET": "hmac-very-secret"})
    assert "very-secret" not in repr(settings)


def test_a_stop_string_ends_the_read_and_is_cut() -> None:
    vlm = engine(lambda: [chunk("<doctag>x</doctag>"), chunk("garbage" * 3)], "docling")
    generation = vlm.generate(page(), 0.0)
    assert generation.finish_reason == "stop"
    assert generation.text == "<doctag>x"


@pytest.mark.parametrize("fault", [
    openai.APIConnectionError(request=REQUEST),
    openai.APITimeoutError(request=REQUEST),
    status_error(429), status_error(500), status_error(503),
])
def test_a_failed_request_to_a_server_that_answers_is_transient(fault: Exception) -> None:
    vlm = engine(fault)
    with pytest.raises(OcrError) as raised:
        vlm.recognize(page(), RecognizeOptions())
    assert raised.value.code == "transient" and raised.value.retryable
    assert vlm.gate.up and vlm.gate.outages == 0


def test_a_server_that_is_down_holds_the_page_until_it_answers() -> None:
    answers = iter([openai.APIConnectionError(request=REQUEST)])

    def answer() -> Iterator[Any]:
        fault = next(answers, None)
        if fault is not None:
            raise fault
        return iter([chunk("Hello"), chunk(finish="stop")])

    vlm = engine(answer, down_probes=3)
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.text == "Hello"
    # The first request found the server down; the page waited (4 looks, the last
    # answered) and was sent once more: no retry of the task, no fallback.
    assert vlm._client.probes == 4 and len(vlm._client.calls) == 2  # type: ignore[attr-defined]
    assert vlm.counters()["ocr_vlm_server_outages_total"] == 1.0


def test_a_page_waiting_for_a_server_that_stays_down_ends_at_its_time_limit() -> None:
    vlm = engine(openai.APIConnectionError(request=REQUEST), down_probes=10**9,
                 OCR_VLM_API_PAGE_TIME_LIMIT="1")
    with pytest.raises(OcrError) as raised:
        vlm.recognize(page(), RecognizeOptions())
    assert raised.value.code == "timeout" and not raised.value.retryable
    with pytest.raises(OcrError) as raised:
        vlm.recognize(page(), RecognizeOptions(deadline=time.time() + 0.5))
    assert raised.value.code == "deadline_exceeded"


def test_an_answer_longer_than_the_bound_is_transient() -> None:
    def endless() -> Iterator[Any]:
        for n in itertools.count():
            time.sleep(0.01)
            yield chunk(f" word{n}")

    vlm = engine(endless, tokens=10**9, OCR_VLM_API_TIMEOUT="0.3")
    with pytest.raises(OcrError) as raised:
        vlm.generate(page(), 0.0)
    assert raised.value.code == "transient" and "OCR_VLM_API_TIMEOUT" in raised.value.message
    assert vlm._client.streams[-1].closed  # type: ignore[attr-defined]


def test_an_aborted_answer_is_sent_again_and_a_server_repetition_is_one() -> None:
    with pytest.raises(OcrError) as raised:
        engine(lambda: [chunk("Hel"), chunk(finish="abort")]).recognize(
            page(), RecognizeOptions())
    assert raised.value.code == "transient" and raised.value.retryable
    vlm = engine(lambda: [chunk("la la"), chunk(finish="repetition")])
    result = vlm.recognize(page(), RecognizeOptions())
    assert result.vlm is not None and result.text == ""
    assert (result.vlm.finish_reason, result.vlm.tries) == ("repetition", 2)


def test_every_request_states_its_sampling_and_the_profiles_fields() -> None:
    vlm = engine(lambda: [chunk("x"), chunk(finish="stop")])
    vlm.recognize(page(), RecognizeOptions())
    call = vlm._client.calls[0]  # type: ignore[attr-defined]
    assert (call["temperature"], call["top_p"]) == (0.0, 1.0)
    assert call["extra_body"] == {"top_k": -1, "repetition_penalty": 1.0, "min_p": 0.0}
    deepseek = engine(lambda: [chunk("x"), chunk(finish="stop")], "deepseek-ocr")
    deepseek.generate(page(), 0.0)
    assert deepseek._client.calls[0]["extra_body"]["skip_special_tokens"] is False  # type: ignore[attr-defined]


def test_merged_deltas_loop_and_count_as_single_token_deltas_do() -> None:
    text = "| a | b |\n" * 200
    rng = random.Random(7)

    def merged() -> Iterator[Any]:
        at = 0
        while at < len(text):
            size = rng.randint(1, 40)  # several tokens in one delta, cut anywhere
            yield chunk(text[at:at + size])
            at += size
        yield chunk(finish="length")

    def single() -> Iterator[Any]:
        yield from (chunk(ch) for ch in text)
        yield chunk(finish="length")

    one, many = engine(single, tokens=10**6), engine(merged, tokens=10**6)
    by_char, by_run = one.generate(page(), 0.0), many.generate(page(), 0.0)
    assert by_char.finish_reason == by_run.finish_reason == "repetition"
    # The loop is seen at the same piece: the merged read stops at the end of the
    # delta that holds it, so its text is the other's and at most one delta more.
    assert by_run.text.startswith(by_char.text)
    assert len(by_run.text) - len(by_char.text) < 40
    for read in (by_char, by_run):  # without usage: the pieces of the text received
        pieces = TextPieces()
        assert read.generation_tokens == len(pieces.feed(read.text) + pieces.end())
    # A server's usage wins over the count of pieces.
    counted = engine(lambda: [chunk("Hello world, again"), chunk(finish="stop"),
                              chunk(usage=(50, 4))]).generate(page(), 0.0)
    assert counted.generation_tokens == 4


def test_a_stream_that_breaks_off_is_transient() -> None:
    broken = openai.APIError("connection reset mid-stream", request=REQUEST, body=None)
    with pytest.raises(OcrError) as raised:
        engine(lambda: [chunk("Hel"), broken]).recognize(page(), RecognizeOptions())
    assert raised.value.code == "transient"


@pytest.mark.parametrize("code", [400, 404])
def test_a_refused_page_is_a_coded_error_with_a_safe_message(code: int) -> None:
    body = {"error": {"type": "invalid_request_error",
                      "message": "model 'secret-model' not found; prompt: Read it."}}
    with pytest.raises(OcrError) as raised:
        engine(status_error(code, body)).recognize(page(), RecognizeOptions())
    error = raised.value
    assert error.code == "vlm_api_error" and not error.retryable
    assert str(code) in error.message and "invalid_request_error" in error.message
    assert "secret-model" not in error.message and "Read it" not in error.message


def test_settings_pick_the_server_and_the_model_name() -> None:
    local = Settings.from_env({"OCR_ENGINE": "vlm-api", "OCR_VLM_SERVER_PORT": "8123",
                               "OCR_MODEL": "org/served"})
    assert local.vlm_api_base == "http://127.0.0.1:8123/v1"
    assert served_model(local) == "org/served"  # not in the model directory: its name
    remote = Settings.from_env({"OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "qwen2.5-vl",
                                "OCR_VLM_API_URL": "https://gpu.example/v1/"})
    assert (remote.vlm_api_base, served_model(remote)) == ("https://gpu.example/v1",
                                                           "qwen2.5-vl")


def test_a_vlm_api_worker_is_a_thread_pool_of_its_pages_in_flight() -> None:
    settings = Settings.from_env({"OCR_ENGINE": "vlm-api"})
    config = worker_app_config(settings, "vlm-api")
    assert config["worker_pool"] == "tasks.queue.pool:ThreadTaskPool"
    assert config["worker_concurrency"] == 64
    assert config["task_annotations"]["ocr.pdf_page"]["soft_time_limit"] == 840
    assert worker_app_config(Settings.from_env({"OCR_VLM_API_IN_FLIGHT": "128"}),
                             "vlm-api")["worker_concurrency"] == 128
    assert worker_app_config(Settings.from_env({"OCR_CONCURRENCY": "2"}),
                             "vlm-api")["worker_concurrency"] == 2
    other = worker_app_config(Settings.from_env({}), "tesseract")
    assert other["worker_pool"] == "tasks.queue.pool:TaskPool"
    assert other["worker_concurrency"] is None  # Celery's: a child a core


class ThreadedServerEngine(FakeEngine):
    """A plugin engine whose traits alone make its worker a threads pool with retries in time."""

    name = "threaded-fake"
    pool_kind = "threads"

    @classmethod
    def concurrency(cls, settings: Settings) -> int | None:
        return 7

    @classmethod
    def page_time_limit(cls, settings: Settings) -> float | None:
        return 5.0

    @classmethod
    def retry_seconds(cls, settings: Settings) -> float | None:
        return 1.0


def test_a_plugin_engines_traits_set_its_pool_and_retries_without_its_name_anywhere() -> None:
    settings = Settings.from_env({"OCR_ENGINE_PLUGINS": f"threaded-fake={__name__}:"
                                                        "ThreadedServerEngine"})
    config = worker_app_config(settings, "threaded-fake")
    assert config["worker_pool"] == "tasks.queue.pool:ThreadTaskPool"
    assert config["worker_concurrency"] == 7
    assert config["task_annotations"]["ocr.pdf_page"] == {"soft_time_limit": 5.0,
                                                         "time_limit": 35.0}
    assert max_retries(settings, "threaded-fake") == 0  # 1 s fits no backoff step


def test_vlm_api_pages_are_retried_for_a_time_not_a_count() -> None:
    assert max_retries(Settings.from_env({}), "tesseract") == MAX_RETRIES
    assert max_retries(Settings.from_env({}), "vlm-api") > MAX_RETRIES  # 600 s
    assert max_retries(Settings.from_env({"OCR_VLM_API_RETRY_SECONDS": "1"}), "vlm-api") == 0


def test_the_page_grid_comes_from_a_local_models_image_processor(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        '{"patch_size": 14, "merge_size": 2, "max_pixels": 3136, "min_pixels": 784}')
    assert processor_grid(tmp_path) == PatchGrid(factor=28, max_pixels=3136, min_pixels=784)
    assert processor_grid(tmp_path / "absent") == PatchGrid()
    assert processor_grid(None) == PatchGrid()  # a remote server: the profile's budget


class _Handle(OcrEngine):
    """An engine that must never serve two threads at once (like a tesseract handle)."""

    name = "handle"
    made = 0

    def __init__(self) -> None:
        self.lock = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> _Handle:
        cls.made += 1
        return cls()

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        assert self.lock.acquire(blocking=False), "one handle, two threads"
        try:
            PAIRS.wait()  # two calls at once: only two instances let them meet
        finally:
            self.lock.release()
        return PageResult(text=str(id(self)))


PAIRS = threading.Barrier(2, timeout=60)


def test_a_thread_pool_serves_an_unsafe_engine_one_instance_per_caller() -> None:
    settings = Settings.from_env({})
    _Handle.made = 0
    pool = EnginePool(_Handle.load(settings), lambda: _Handle.load(settings), size=2)
    with ThreadPoolExecutor(8) as threads:
        texts = list(threads.map(lambda _: pool.recognize(page(), RecognizeOptions()),
                                 range(8)))
    assert _Handle.made == 2 and len({t.text for t in texts}) == 2  # made when needed, never more


def test_a_vlm_api_registry_loads_its_fallback_when_first_needed(tmp_path: Path) -> None:
    settings = Settings.from_env({"OCR_ENGINE": "vlm-api", "OCR_VLM_API_MODEL": "m",
                                  "OCR_VLM_API_URL": "http://127.0.0.1:9/v1"})
    registry = ResidentEngines(settings=settings, primary="vlm-api", threaded=True)
    registry.get()
    assert list(registry.engines) == ["vlm-api"]  # no tesseract at start
    registry.get("tesseract")
    assert isinstance(registry.engines["tesseract"].engine, EnginePool)
    assert not isinstance(registry.engines["vlm-api"].engine, EnginePool)  # thread-safe


def test_a_page_without_colour_renders_grey_for_the_vlm_engines() -> None:
    settings = Settings.from_env({})
    grey = Image.new("L", (300, 400), 200)
    colour = Image.new("RGB", (300, 400), (200, 30, 30))
    docs = [open_pdf(image_pdf([page_image]), None, settings) for page_image in (grey, colour)]
    # No page mode (the VLM engines): grey when the page holds no colour, else RGB.
    assert [render_page(doc, 1, settings, 256).mode for doc in docs] == ["L", "RGB"]
    assert render_page(docs[1], 1, settings, 256, mode="L").mode == "L"
