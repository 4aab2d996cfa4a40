"""Engine adapters by name. Each third-party OCR library lives in one module here."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tasks.errors import UnknownEngine

from .base import OcrEngine, PageResult, RecognizeOptions, Word

if TYPE_CHECKING:
    from worker_config import Settings

BUILTIN_ENGINES = {
    "tesseract": "tasks.engines.tesseract:TesseractEngine",
    "mlx-vlm": "tasks.engines.mlx_vlm:MlxVlmEngine",
}

__all__ = ["BUILTIN_ENGINES", "OcrEngine", "PageResult", "RecognizeOptions", "Word",
           "engine_class"]


def engine_class(name: str, settings: Settings) -> type[OcrEngine]:
    """The adapter class for `name`, from the built-ins or OCR_ENGINE_PLUGINS."""
    target = settings.engine_plugins.get(name) or BUILTIN_ENGINES.get(name)
    if target is None:
        raise UnknownEngine(f"unknown engine {name!r}; choose one of "
                            f"{', '.join(settings.all_engine_names())}")
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if not (isinstance(cls, type) and issubclass(cls, OcrEngine)):
        raise UnknownEngine(f"{target} is not an OcrEngine")
    return cls
