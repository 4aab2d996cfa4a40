"""MLX-VLM adapter: the only module that imports `mlx` and `mlx_vlm`.

Runs in a worker pool child, never in the parent: MLX evaluated before a fork
deadlocks the child on Linux, and Metal is not fork-safe. The model is loaded from a
local folder only (a folder of OCR_MODEL_DIR or a hub-cache snapshot, resolved by
tasks/models/locate.py); `mlx_vlm.load` would download from a hub when the path is missing,
so the folder is checked first and the hub is switched off for this process.

Each page goes to the model at the profile's page budget (tasks/engines/vlm/budget.py)
and is generated with `mlx_vlm.stream_generate` under a repetition guard; the ladder of
temperatures, olmOCR's re-ask and the page's `vlm` record are tasks/engines/vlm/page_read.py's,
shared with the inference-server engine (tasks/engines/vlm/vlm_api_engine.py). A read that is still
incomplete comes back with `vlm.finish_reason` saying so and no text: the pipeline
(tasks/pipeline/documents.py) falls back to another engine or fails the page.
"""

from __future__ import annotations

import gc
import logging
import os
from typing import TYPE_CHECKING, Any

from PIL import Image

from tasks.engines.base import PageResult, RecognizeOptions
from tasks.engines.vlm.base import VlmBudget, VlmEngine, vlm_prompt
from tasks.engines.vlm.budget import PatchGrid
from tasks.engines.vlm.page_read import Generation, StopWatch
from tasks.engines.vlm.profiles import VlmProfile, select_profile
from tasks.engines.vlm.repetition import RepetitionGuard
from tasks.errors import EngineUnavailable
from tasks.models.locate import loadable_model, model_missing

if TYPE_CHECKING:
    from tasks.settings import Settings

log = logging.getLogger(__name__)


def patch_grid(processor: Any) -> PatchGrid:
    """The cell size and pixel limits of the model's image processor, where it has them."""
    image_processor = getattr(processor, "image_processor", None)
    patch = getattr(image_processor, "patch_size", None)
    merge = getattr(image_processor, "merge_size", None)
    return PatchGrid.of(patch, merge, getattr(image_processor, "max_pixels", None),
                        getattr(image_processor, "min_pixels", None))


class MlxVlmEngine(VlmEngine):
    """A vision-language model run by mlx-vlm (Metal, CUDA or CPU)."""

    name = "mlx-vlm"

    @classmethod
    def concurrency(cls, settings: Settings) -> int | None:
        """One child: each child holds the whole model."""
        return 1

    def __init__(self, model: Any, processor: Any, prompt: str, profile: VlmProfile,
                 budget: VlmBudget, model_name: str, modules: tuple[Any, Any],
                 clear_cache: bool = True) -> None:
        super().__init__(model_name, profile, budget)
        self._model = model
        self._processor = processor
        self._prompt = prompt
        self._mx, self._mlx_vlm = modules
        self._clear_cache = clear_cache

    @classmethod
    def model_entry(cls, settings: Settings) -> str | None:
        return settings.model or None

    @classmethod
    def load(cls, settings: Settings) -> MlxVlmEngine:
        if not settings.model:
            raise EngineUnavailable("OCR_MODEL is not set; name a model folder or hub repo "
                                    "id in OCR_MODEL_DIR")
        path = loadable_model(settings)
        if path is None:
            raise EngineUnavailable(model_missing(settings))
        profile = select_profile(path, settings.model_profile,
                                 model_name=settings.model)
        # Belt and braces: even a bug in the path check above cannot reach a hub.
        os.environ["HF_HUB_OFFLINE"] = "1"
        os.environ["TRANSFORMERS_OFFLINE"] = "1"
        try:
            import mlx.core as mx
            import mlx_vlm
            from mlx_vlm.prompt_utils import apply_chat_template
        except ImportError as exc:
            raise EngineUnavailable(
                f"the VLM engine's packages are not installed ({exc.name or 'mlx_vlm'} "
                "is missing): run `make vlm` (pip install -r requirements-vlm.txt)") from exc

        model, processor = mlx_vlm.load(str(path))
        prompt = apply_chat_template(processor, model.config, vlm_prompt(settings, profile),
                                     num_images=1)
        if not isinstance(prompt, str):
            raise EngineUnavailable("the model's chat template did not give a text prompt")
        budget = VlmBudget.of(settings, profile, patch_grid(processor))
        set_memory_limits(mx, settings)
        log.info("mlx-vlm profile %s: pages at %d px longest side (processor max_pixels "
                 "%s), %d tokens, temperatures %s", profile.name, budget.longest_side,
                 budget.grid.max_pixels, budget.max_tokens, budget.temperatures)
        return cls(model, processor, prompt, profile, budget, settings.model,
                   (mx, mlx_vlm), clear_cache=settings.mlx_clear_cache)

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        return self.read(self.sized(image), options, self.generate)

    def generate(self, image: Image.Image, temperature: float,
                 loop_guard: bool = True) -> Generation:
        """One streamed generate call, stopped early by a stop string or a loop.

        `loop_guard=False` lets a loop run to the token limit (the benchmark's baseline).
        """
        guard = RepetitionGuard() if loop_guard else None
        stops = StopWatch(self.profile.stop_strings)
        parts: list[str] = []
        prompt_tokens = generated = 0
        finish: str | None = None
        stream = self._mlx_vlm.stream_generate(
            self._model, self._processor, self._prompt, image=[image],
            max_tokens=self.budget.max_tokens, temperature=temperature, verbose=False)
        try:
            for chunk in stream:
                prompt_tokens = int(chunk.prompt_tokens)
                generated = int(chunk.generation_tokens)
                parts.append(chunk.text)
                if chunk.finish_reason is not None:
                    finish = str(chunk.finish_reason)  # the last chunk: its token was seen
                    break
                if guard is not None and guard.feed(int(chunk.token)):
                    finish = "repetition"
                    break
                if stops.feed(chunk.text):
                    finish = "stop"
                    break
        except (ValueError, RuntimeError) as exc:
            log.warning("mlx-vlm: generation failed (%s): %s", type(exc).__name__, exc)
            finish = "error"
        finally:
            stream.close()
        return Generation(stops.cut("".join(parts)), prompt_tokens, generated,
                          finish or "length")

    def release_cache(self) -> dict[str, float]:
        mx = self._mx
        memory = {
            "mlx_active_mb": mx.get_active_memory() / 2**20,
            "mlx_peak_mb": mx.get_peak_memory() / 2**20,
            "mlx_cache_mb": mx.get_cache_memory() / 2**20,
        }
        if self._clear_cache:
            mx.clear_cache()
        mx.reset_peak_memory()
        return memory

    def close(self) -> None:
        self._model = None
        self._processor = None
        gc.collect()  # the model's reference cycles hold arrays until collected
        self._mx.clear_cache()


def set_memory_limits(mx: Any, settings: Settings) -> None:
    """OCR_MLX_MEMORY_LIMIT_MB / OCR_MLX_CACHE_LIMIT_MB, set in the child after the load.

    On Metal the memory limit also caps the wired (non-swappable) memory MLX asks for,
    within what the device recommends.
    """
    if settings.mlx_memory_limit_mb is not None:
        limit = settings.mlx_memory_limit_mb * 2**20
        mx.set_memory_limit(limit)
        if mx.metal.is_available():
            recommended = mx.device_info().get("max_recommended_working_set_size", limit)
            mx.set_wired_limit(min(limit, int(recommended)))
    if settings.mlx_cache_limit_mb is not None:
        mx.set_cache_limit(settings.mlx_cache_limit_mb * 2**20)
    if settings.mlx_memory_limit_mb is not None or settings.mlx_cache_limit_mb is not None:
        log.info("mlx limits (pid %d): memory %s MB, cache %s MB", os.getpid(),
                 settings.mlx_memory_limit_mb, settings.mlx_cache_limit_mb)
