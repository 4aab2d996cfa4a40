"""The vlm-api adapter's stream handling and fault mapping, with a fake (named) server.

`FakeOpenAI` stands in for the `openai` package: its client answers with scripted
chunks or raises the package's error types (their real classes, built without HTTP).
The real server is tests/test_e2e_vlm_api.py's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx2 as httpx
import openai
import pytest
from PIL import Image

from tasks.engines.base import RecognizeOptions
from tasks.engines.vlm_api import VlmApiEngine, processor_grid
from tasks.engines.vlm_profiles import PROFILES
from tasks.engines.vlm_runtime import PatchGrid
from tasks.errors import OcrError
from tasks.models.locate import served_model
from tasks.queue.celery_config import default_concurrency
from tasks.settings import Settings

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
    """`client.chat.completions.create(...)` answering from a script."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []
        self.streams: list[FakeStream] = []
        self.chat = SimpleNamespace(completions=SimpleNamespace(create=self.create))
        self.base_url = httpx.URL("http://127.0.0.1:1/v1")

    def create(self, **kwargs: Any) -> FakeStream:
        self.calls.append(kwargs)
        if isinstance(self.answer, BaseException):
            raise self.answer
        stream = FakeStream(iter(self.answer()))
        self.streams.append(stream)
        return stream


def engine(answer: Any, profile: str = "generic", tokens: int = 100) -> VlmApiEngine:
    return VlmApiEngine(FakeClient(answer), openai, "served-model", "Read it.",
                        PROFILES[profile], longest_side=64, max_tokens=tokens,
                        temperatures=(0.0, 0.2), grid=PatchGrid())


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
    assert result.vlm.generation_tokens == streams[-1].read  # no usage: deltas counted


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
def test_an_unreachable_busy_or_failing_server_is_transient(fault: Exception) -> None:
    with pytest.raises(OcrError) as raised:
        engine(fault).recognize(page(), RecognizeOptions())
    assert raised.value.code == "transient" and raised.value.retryable


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


def test_a_vlm_api_worker_keeps_four_pages_in_flight_by_default() -> None:
    assert default_concurrency(Settings.from_env({"OCR_ENGINE": "vlm-api"})) >= 4
    assert default_concurrency(Settings.from_env({"OCR_ENGINE": "vlm-api",
                                                  "OCR_CONCURRENCY": "2"})) == 2


def test_the_page_grid_comes_from_a_local_models_image_processor(tmp_path: Path) -> None:
    (tmp_path / "preprocessor_config.json").write_text(
        '{"patch_size": 14, "merge_size": 2, "max_pixels": 3136, "min_pixels": 784}')
    assert processor_grid(tmp_path) == PatchGrid(factor=28, max_pixels=3136, min_pixels=784)
    assert processor_grid(tmp_path / "absent") == PatchGrid()
    assert processor_grid(None) == PatchGrid()  # a remote server: the profile's budget
