"""MLX-VLM adapter: the only module that imports `mlx` and `mlx_vlm`.

Runs in a worker pool child, never in the parent: MLX evaluated before a fork
deadlocks the child on Linux, and Metal is not fork-safe. The model is loaded from a
local folder only; `mlx_vlm.load` would download from a hub when the path is missing,
so the folder is checked first and the hub is switched off for this process.
"""

from __future__ import annotations

import gc
import os
from typing import TYPE_CHECKING, Any

from tasks.errors import EngineFailed, EngineUnavailable

from .base import OcrEngine, PageResult, RecognizeOptions

if TYPE_CHECKING:
    from PIL import Image

    from worker_config import Settings


class MlxVlmEngine(OcrEngine):
    """A vision-language model run by mlx-vlm (Metal, CUDA or CPU)."""

    name = "mlx-vlm"
    gives_markdown = True

    def __init__(self, model: Any, processor: Any, prompt: str, max_tokens: int,
                 model_name: str, modules: tuple[Any, Any], clear_cache: bool = True) -> None:
        self._model = model
        self._processor = processor
        self._prompt = prompt
        self._max_tokens = max_tokens
        self._mx, self._mlx_vlm = modules
        self._clear_cache = clear_cache
        self.model = model_name

    @classmethod
    def model_entry(cls, settings: Settings) -> str | None:
        return settings.model or None

    @classmethod
    def load(cls, settings: Settings) -> MlxVlmEngine:
        path = settings.model_path
        if path is None:
            raise EngineUnavailable("OCR_MODEL is not set; name a model folder in "
                                    "OCR_MODEL_DIR")
        if not (path / "config.json").is_file():
            raise EngineUnavailable(f"model {settings.model!r} is not a model folder in "
                                    f"{settings.model_dir} (no config.json); models are "
                                    "never downloaded")
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
        prompt = apply_chat_template(processor, model.config, settings.prompt, num_images=1)
        if not isinstance(prompt, str):
            raise EngineUnavailable("the model's chat template did not give a text prompt")
        return cls(model, processor, prompt, settings.vlm_max_tokens, settings.model,
                   (mx, mlx_vlm), clear_cache=settings.mlx_clear_cache)

    def recognize(self, image: Image.Image, options: RecognizeOptions) -> PageResult:
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        try:
            result = self._mlx_vlm.generate(self._model, self._processor, self._prompt,
                                            image=[rgb], max_tokens=self._max_tokens,
                                            temperature=0.0, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise EngineFailed(f"the model could not process this page "
                               f"({type(exc).__name__})") from exc
        return PageResult(text=result.text.strip(), stats={
            "prompt_tokens": float(result.prompt_tokens),
            "generation_tokens": float(result.generation_tokens),
            "generation_tps": float(result.generation_tps),
        })

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
