"""vlm-api adapter: a vision-language model behind an OpenAI-compatible inference server.

The only module that imports `openai`. Runs in a vlm-api worker's thread pool
(tasks/queue/celery_config.py): one engine object, shared by OCR_VLM_API_IN_FLIGHT
threads, each with a page in flight (the openai client is thread-safe; the engine keeps
no per-page state). The model lives in the inference server (`mlx_vlm.server` from the
Procfile's `vlm-server`, LM Studio or Ollama on a Mac, vLLM or SGLang on GPU hosts),
which batches the pages that arrive together (docs/gpu-servers.md).

Same contract as the in-process engine (tasks/engines/vlm/mlx_vlm_engine.py): the model profile's
prompt, page budget and normaliser; a streamed answer under the repetition guard (the
stream is closed when a loop is seen; the guard counts text pieces, not deltas, since a
server merges tokens into one delta when the client lags); the temperature ladder,
olmOCR's re-ask and the `vlm` record (tasks/engines/vlm/page_read.py), token counts from
the server's `usage`. Every request states its sampling (`SAMPLING`): vLLM and SGLang
otherwise apply the model's generation_config.json (Qwen2.5-VL: top_k=1, top_p=0.001,
repetition_penalty=1.05), and the ladder's retries would read greedily again.

Faults: a server that cannot be reached (refused, connect timeout, 502-504) is down or
loading: the page waits for it in the `ServerGate` (tasks/engines/vlm/server_gate.py) without
a retry burnt, until OCR_VLM_API_PAGE_TIME_LIMIT. A request that fails while the server
answers /models (a reset, an answer longer than OCR_VLM_API_TIMEOUT: a bound on the
whole answer), 429, another 5xx, or an `abort` finish (a restart, a preemption) raises
`TransientError`: the task sends the page again with backoff, for
OCR_VLM_API_RETRY_SECONDS; such a page never goes to the fallback. Another 4xx
(unknown model, prompt too long) raises `VlmApiError` (`vlm_api_error`, not retried).
Messages carry the status and the server's short error type only: never the prompt, the
page's text or OCR_VLM_API_KEY.

Celery enforces no time limits in a thread pool: the page's own clock (`PageClock`:
OCR_VLM_API_PAGE_TIME_LIMIT and the job's deadline) bounds every wait and request here.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from tasks.engines.base import PageResult, RecognizeOptions
from tasks.engines.vlm.base import VlmBudget, VlmEngine, vlm_prompt
from tasks.engines.vlm.budget import PatchGrid
from tasks.engines.vlm.page_read import Generation, StopWatch
from tasks.engines.vlm.profiles import VlmProfile, select_profile
from tasks.engines.vlm.repetition import RepetitionGuard, TextPieces
from tasks.engines.vlm.server_gate import ServerGate, ServerWaitOver
from tasks.errors import (
    DeadlineExceeded,
    EngineUnavailable,
    OcrError,
    Timeout,
    TransientError,
    VlmApiError,
)
from tasks.models.locate import configured_model, served_model
from tasks.server_probe import check_server

if TYPE_CHECKING:
    from tasks.settings import Settings

log = logging.getLogger(__name__)
# The server's finish reasons. `abort` (vLLM: a restart, a preemption) is transient: the
# page is sent again; any other (content_filter, tool_calls, ...) is no clean read of the
# page: an error, so the page falls back or fails.
SERVER_FINISH = {"stop": "stop", "length": "length", "repetition": "repetition"}
ABORT = "abort"
# Sampling stated on every request besides `temperature` (the ladder's): what the
# in-process engine does. `top_p` is OpenAI's own field; the others go in the body as
# extra fields, each taken by vLLM, SGLang and mlx_vlm.server (top_k=-1 disables top-k
# in all three; vLLM and SGLang refuse 0 in some versions) and ignored by Ollama.
TOP_P = 1.0
SAMPLING: dict[str, Any] = {"top_k": -1, "repetition_penalty": 1.0, "min_p": 0.0}


@dataclass(frozen=True)
class PageClock:
    """When one page's time is up (monotonic), and which limit that is."""

    until: float
    deadline: bool  # the job's deadline, not OCR_VLM_API_PAGE_TIME_LIMIT

    @classmethod
    def start(cls, seconds: float, deadline: float | None) -> PageClock:
        now = time.monotonic()
        if deadline is not None and deadline - time.time() < seconds:
            return cls(now + max(0.0, deadline - time.time()), True)
        return cls(now + seconds, False)

    def left(self) -> float:
        return self.until - time.monotonic()

    def error(self, limit: float) -> OcrError:
        if self.deadline:
            return DeadlineExceeded("the job's deadline passed while its page was read by "
                                    "the inference server")
        return Timeout(f"the page ran past OCR_VLM_API_PAGE_TIME_LIMIT ({limit:.0f} s) "
                       "at the inference server")


class _Unreachable(Exception):
    """A request that reached no answer (connection refused, reset, timed out)."""


def processor_grid(model_path: Path | None) -> PatchGrid:
    """The page geometry of a local model's image processor (preprocessor_config.json).

    Qwen2/2.5-VL processors cut images into 14 px patches merged 2x2 and scale any image
    over `max_pixels` down; sending the page at that grid means the server changes
    nothing and the reported `image_size` is what the model saw. The folder is OCR_MODEL's
    when it resolves locally, else OCR_VLM_API_MODEL's when that names a local folder
    (mlx_vlm.server on this machine answers to its path). Without a local copy of the
    model (a remote server), the page goes at the profile's budget, unrounded (factor 1).
    """
    if model_path is None:
        return PatchGrid()
    try:
        config = json.loads((model_path / "preprocessor_config.json").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return PatchGrid()
    return PatchGrid.of(config.get("patch_size"), config.get("merge_size"),
                        config.get("max_pixels"), config.get("min_pixels"))


class VlmApiEngine(VlmEngine):
    """A VLM served by an OpenAI-compatible inference server."""

    name = "vlm-api"
    thread_safe = True
    # Each page mostly waits on the inference server, which batches what arrives
    # together: one process keeps a GPU server's whole batch in flight (a child per page
    # would take ~150 MB each).
    pool_kind = "threads"
    # zlib level of the page's PNG. Measured on corpus pages at 1288 px against Pillow's
    # default 6: grey scans 16 vs 25 ms and 306 vs 290 kB, grey Han page 33 vs 169 ms
    # (538 vs 469 kB), RGB photo scan 72 vs 278 ms (1.31 vs 1.17 MB): 5-15 % more bytes
    # on the loopback or LAN a request body crosses, a third to three quarters less CPU.
    PNG_LEVEL = 1

    @classmethod
    def concurrency(cls, settings: Settings) -> int | None:
        return settings.vlm_api_in_flight

    @classmethod
    def page_time_limit(cls, settings: Settings) -> float | None:
        return float(settings.vlm_api_page_time_limit)

    @classmethod
    def retry_seconds(cls, settings: Settings) -> float | None:
        """A GPU server takes minutes to load or restart: pages are retried for a time."""
        return float(settings.vlm_api_retry_seconds)

    def __init__(self, client: Any, openai_module: Any, model_name: str, prompt: str,
                 profile: VlmProfile, longest_side: int, max_tokens: int,
                 temperatures: tuple[float, ...], grid: PatchGrid,
                 settings: Settings, probe: Callable[[], bool] | None = None) -> None:
        super().__init__(model_name, profile,
                         VlmBudget(longest_side, max_tokens, temperatures, grid))
        self._client = client
        self._openai = openai_module
        self._prompt = prompt
        self.answer_seconds = settings.vlm_api_timeout
        self.connect_seconds = settings.vlm_api_connect_timeout
        self.page_seconds = float(settings.vlm_api_page_time_limit)
        self._settings = settings
        # Whether the server answers (`server_probe.check_server`; tests give their own).
        self._answers = probe or self._server_answers
        self.gate = ServerGate(self._answers, settings.vlm_api_probe_seconds,
                               settings.vlm_api_base)
        self.extra_body = {**SAMPLING, **dict(profile.request_fields)}
        self._in_flight = 0  # requests at the server now (`gauges`)
        self._counting = threading.Lock()

    @classmethod
    def load(cls, settings: Settings) -> VlmApiEngine:
        try:
            import openai
        except ImportError as exc:
            raise EngineUnavailable(
                "the vlm-api engine's package is not installed (openai is missing): run "
                "`make vlm-api` (pip install -r requirements-vlm-api.txt)") from exc
        model_name = served_model(settings)
        if not model_name:
            raise EngineUnavailable("the vlm-api engine needs OCR_VLM_API_MODEL (the model "
                                    "name the inference server serves) or OCR_MODEL")
        local = configured_model(settings)
        if local is None and Path(model_name).is_dir():
            local = Path(model_name)  # a server on this machine that answers to its path
        # The profile from the local model folder when there is one (its config.json),
        # else from the served model's name; OCR_MODEL_PROFILE wins over both.
        profile = select_profile(local or Path(model_name), settings.model_profile,
                                 model_name=model_name)
        text = vlm_prompt(settings, profile)
        client = openai.OpenAI(base_url=settings.vlm_api_base,
                               api_key=settings.vlm_api_key or "none",
                               timeout=openai.Timeout(settings.vlm_api_timeout,
                                                      connect=settings.vlm_api_connect_timeout),
                               max_retries=0)
        budget = VlmBudget.of(settings, profile, processor_grid(local))
        engine = cls(client, openai, model_name, text, profile,
                     longest_side=budget.longest_side, max_tokens=budget.max_tokens,
                     temperatures=budget.temperatures, grid=budget.grid, settings=settings)
        log.info("vlm-api: model %s at %s, profile %s, pages at %d px, %d tokens",
                 model_name, settings.vlm_api_base, profile.name, budget.longest_side,
                 budget.max_tokens)
        return engine

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        clock = PageClock.start(self.page_seconds, options.deadline)
        # Grey pages go grey (the server's image loader makes RGB of them): no 3-byte
        # copy of each page held while it waits at the server.
        return self.read(self.sized(image, ("L", "RGB")), options,
                         functools.partial(self.generate, clock=clock))

    def counters(self) -> dict[str, float]:
        return {"ocr_vlm_server_outages_total": float(self.gate.outages),
                "ocr_vlm_server_wait_seconds_total": round(self.gate.down_seconds, 3)}

    def gauges(self) -> dict[str, float]:
        return {"ocr_child_vlm_in_flight": float(self._in_flight),
                "ocr_child_vlm_server_up": 1.0 if self.gate.up else 0.0}

    def messages(self, image: Image.Image) -> list[dict[str, Any]]:
        """The chat messages of one page: the image (PNG data URL) and the prompt."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=self.PNG_LEVEL)
        url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
        parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": url}},
                                       {"type": "text", "text": self._prompt}]
        if not self.profile.image_first:
            parts.reverse()
        messages: list[dict[str, Any]] = []
        if self.profile.system_prompt:
            messages.append({"role": "system", "content": self.profile.system_prompt})
        messages.append({"role": "user", "content": parts})
        return messages

    def generate(self, image: Image.Image, temperature: float,
                 clock: PageClock | None = None) -> Generation:
        """One read of one page: sent when the server answers, again if it was away."""
        clock = clock or PageClock.start(self.page_seconds, None)
        messages = self.messages(image)
        while True:
            try:
                self.gate.wait_up(clock.until)
            except ServerWaitOver:
                raise clock.error(self.page_seconds) from None
            try:
                return self._counted_request(messages, temperature, clock)
            except _Unreachable as exc:
                if clock.left() <= 0:
                    raise clock.error(self.page_seconds) from None
                if self._answers():  # up: this request failed, not the server
                    raise TransientError(f"the inference server at {_host(self._client)} "
                                         f"did not answer the page ({exc})") from None
                self.gate.mark_down(str(exc))

    def _counted_request(self, messages: list[dict[str, Any]], temperature: float,
                         clock: PageClock) -> Generation:
        """`_request`, counted in `gauges` while it is at the server."""
        with self._counting:
            self._in_flight += 1
        try:
            return self._request(messages, temperature, clock)
        finally:
            with self._counting:
                self._in_flight -= 1

    def _request(self, messages: list[dict[str, Any]], temperature: float,
                 clock: PageClock) -> Generation:
        """One streamed request, closed early at a stop string or a loop."""
        openai = self._openai
        seconds = min(self.answer_seconds, clock.left())
        if seconds <= 0:
            raise clock.error(self.page_seconds)
        until = time.monotonic() + seconds
        guard = RepetitionGuard()
        pieces = TextPieces()
        stops = StopWatch(self.profile.stop_strings)
        parts: list[str] = []
        finish: str | None = None
        prompt_tokens = generated = counted = 0
        aborted = over = False
        try:
            stream = self._client.chat.completions.create(
                model=self.model, messages=messages, stream=True,
                stream_options={"include_usage": True}, max_tokens=self.budget.max_tokens,
                temperature=temperature, top_p=TOP_P, extra_body=self.extra_body,
                timeout=openai.Timeout(seconds, connect=min(seconds, self.connect_seconds)))
            with stream:
                for chunk in stream:
                    usage = getattr(chunk, "usage", None)
                    if usage is not None:
                        prompt_tokens = int(usage.prompt_tokens or 0)
                        generated = int(usage.completion_tokens or 0)
                    for choice in chunk.choices or ():
                        delta = choice.delta.content if choice.delta is not None else None
                        if delta:
                            parts.append(delta)
                            ids = pieces.feed(delta)
                            counted += len(ids)
                            if _loops(guard, ids):
                                finish = "repetition"
                            elif stops.feed(delta):
                                finish = "stop"
                        if choice.finish_reason == ABORT:
                            aborted = True
                        elif choice.finish_reason is not None and finish is None:
                            finish = SERVER_FINISH.get(choice.finish_reason, "error")
                    if aborted or finish == "repetition" or stops.fired:
                        break  # closing the stream tells the server to stop generating
                    if time.monotonic() > until:
                        over = True
                        break
        except openai.APIStatusError as exc:
            raise _status_error(exc) from None
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            if clock.left() <= 0:
                raise clock.error(self.page_seconds) from None
            raise _Unreachable(type(exc).__name__) from None
        except openai.APIError as exc:  # a stream that broke off mid-answer
            raise TransientError(f"the inference server's answer broke off "
                                 f"({type(exc).__name__})") from None
        if aborted:
            raise TransientError("the inference server aborted the answer (a restart or a "
                                 "preemption); the page is sent again")
        if over:
            if clock.left() <= 0:
                raise clock.error(self.page_seconds)
            raise TransientError(f"the inference server's answer took longer than "
                                 f"OCR_VLM_API_TIMEOUT ({self.answer_seconds:.0f} s)")
        if not generated:
            # A server that sends no usage, or a stream closed early: the text's pieces.
            generated = counted + len(pieces.end())
        return Generation(stops.cut("".join(parts)), prompt_tokens, generated,
                          finish or "length")

    def _server_answers(self) -> bool:
        """Whether the server answers `GET /models` within the connect timeout (x2)."""
        return check_server(self._settings, timeout=2 * self.connect_seconds).ok


def _loops(guard: RepetitionGuard, ids: list[int]) -> bool:
    """Feed every piece to the guard; True when the tail became a loop."""
    found = False
    for token in ids:
        found = guard.feed(token) or found
    return found


def _status_error(exc: Any) -> TransientError | VlmApiError:
    """An HTTP error answer as a coded error: 429 and 5xx are transient."""
    status = int(getattr(exc, "status_code", 0) or 0)
    if status == 429 or status >= 500 or status in (408, 409):
        return TransientError(f"the inference server answered {status}; retried later")
    kind = ""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        value = error.get("type") or error.get("code") if isinstance(error, dict) else None
        if isinstance(value, str) and len(value) <= 64 and value.isprintable():
            kind = f" ({value})"
    return VlmApiError(f"the inference server refused the page: HTTP {status}{kind}; "
                       "check OCR_VLM_API_MODEL and the model's context length")


def _host(client: Any) -> str:
    url = getattr(client, "base_url", None)
    host = getattr(url, "host", None)
    port = getattr(url, "port", None)
    return f"{host}:{port}" if host else "the configured URL"
