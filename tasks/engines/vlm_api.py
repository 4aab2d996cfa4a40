"""vlm-api adapter: a vision-language model behind an OpenAI-compatible inference server.

The only module that imports `openai`. Runs in worker pool children; the model itself
lives in the inference server (`mlx_vlm.server` from the Procfile's `vlm-server`, LM
Studio or Ollama on a Mac, vLLM or SGLang on GPU hosts), which batches the pages that
many children send at once. A child holds no model, so a vlm-api worker runs several
children (tasks/queue/celery_config.py `default_concurrency`).

Same contract as the in-process engine (tasks/engines/mlx_vlm.py): the model profile's
prompt, page budget and normaliser; a streamed answer under the repetition guard (the
stream is closed when a loop is seen); the temperature ladder, olmOCR's re-ask and the
`vlm` record (tasks/engines/vlm_reading.py), token counts from the server's `usage`.

Faults: a server that cannot be reached, resets, times out, answers 429 or 5xx, or
breaks off mid-answer raises `TransientError` (the task retries with backoff; a page is
never sent to the fallback because the server was briefly away); another 4xx (unknown
model, prompt too long) raises `VlmApiError` (`vlm_api_error`, not retried). Messages
carry the status and the server's short error type only: never the prompt, the page's
text or OCR_VLM_API_KEY.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from tasks.errors import EngineUnavailable, TransientError, VlmApiError
from tasks.models.locate import configured_model, served_model
from tasks.settings import DEFAULT_PROMPT

from .base import OcrEngine, PageResult, RecognizeOptions
from .vlm_profiles import VlmProfile, select_profile
from .vlm_reading import Generation, StopWatch, read_page
from .vlm_runtime import PatchGrid, RepetitionGuard, budget_size

if TYPE_CHECKING:
    from tasks.settings import Settings

log = logging.getLogger(__name__)
# The server's finish reasons; any other (content_filter, tool_calls, ...) is no clean
# read of the page: an error, so the page falls back or fails.
SERVER_FINISH = {"stop": "stop", "length": "length"}


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


class VlmApiEngine(OcrEngine):
    """A VLM served by an OpenAI-compatible inference server."""

    name = "vlm-api"
    gives_markdown = True
    # Pages are turned upright by tesseract's orientation check before the model reads.
    orientation_engine = "tesseract"
    # No word boxes of its own: a searchable PDF places its words on tesseract's boxes.
    text_layer_from = "tesseract"

    def __init__(self, client: Any, openai_module: Any, model_name: str, prompt: str,
                 profile: VlmProfile, longest_side: int, max_tokens: int,
                 temperatures: tuple[float, ...], grid: PatchGrid) -> None:
        self._client = client
        self._openai = openai_module
        self._prompt = prompt
        self.profile = profile
        self.max_tokens = max_tokens
        self.temperatures = temperatures
        self.grid = grid
        self.model = model_name
        self.longest_side = longest_side
        self.page_longest_side = longest_side

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
        text = settings.prompt if settings.prompt != DEFAULT_PROMPT else profile.prompt
        client = openai.OpenAI(base_url=settings.vlm_api_base,
                               api_key=settings.vlm_api_key or "none",
                               timeout=settings.vlm_api_timeout, max_retries=0)
        engine = cls(client, openai, model_name, text, profile,
                     longest_side=settings.vlm_longest_side or profile.longest_side,
                     max_tokens=settings.vlm_max_tokens or profile.max_tokens,
                     temperatures=settings.vlm_temperatures, grid=processor_grid(local))
        log.info("vlm-api: model %s at %s, profile %s, pages at %d px, %d tokens",
                 model_name, settings.vlm_api_base, profile.name, engine.longest_side,
                 engine.max_tokens)
        return engine

    def page_size(self, width: int, height: int) -> tuple[int, int]:
        """The size a `width` x `height` page goes to the model at."""
        return budget_size(width, height, self.longest_side, self.grid)

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        size = self.page_size(image.width, image.height)
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        sized = rgb if rgb.size == size else rgb.resize(size, Image.Resampling.LANCZOS)
        return read_page(sized, options, self.profile, self.temperatures, self.generate,
                         self.name)

    def messages(self, image: Image.Image) -> list[dict[str, Any]]:
        """The chat messages of one page: the image (PNG data URL) and the prompt."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
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

    def generate(self, image: Image.Image, temperature: float) -> Generation:
        """One streamed request for one page, closed early at a stop string or a loop."""
        openai = self._openai
        guard = RepetitionGuard()
        stops = StopWatch(self.profile.stop_strings)
        ids: dict[str, int] = {}
        parts: list[str] = []
        finish: str | None = None
        prompt_tokens = generated = 0
        try:
            stream = self._client.chat.completions.create(
                model=self.model, messages=self.messages(image), stream=True,
                stream_options={"include_usage": True}, max_tokens=self.max_tokens,
                temperature=temperature)
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
                            if guard.feed(ids.setdefault(delta, len(ids))):
                                finish = "repetition"
                            elif stops.feed(delta):
                                finish = "stop"
                        if choice.finish_reason is not None and finish is None:
                            finish = SERVER_FINISH.get(choice.finish_reason, "error")
                    if finish is not None and (finish == "repetition" or stops.fired):
                        break  # closing the stream tells the server to stop generating
        except openai.APIStatusError as exc:
            raise _status_error(exc) from None
        except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
            raise TransientError(f"the inference server at {_host(self._client)} did not "
                                 f"answer ({type(exc).__name__})") from None
        except openai.APIError as exc:  # a stream that broke off mid-answer
            raise TransientError(f"the inference server's answer broke off "
                                 f"({type(exc).__name__})") from None
        if not generated:
            generated = len(parts)  # a server that sends no usage: one delta per token
        return Generation(stops.cut("".join(parts)), prompt_tokens, generated,
                          finish or "length")


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
