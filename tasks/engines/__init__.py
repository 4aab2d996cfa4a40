"""Engine adapters by name. Each third-party OCR library lives in one module here.

The engine names and what installs each are in `tasks/records/engines.py` (pure data,
which clients import without this package).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tasks.errors import UnknownEngine
from tasks.records.engines import ENGINES

from .base import OcrEngine, PageResult, RecognizeOptions, Word

if TYPE_CHECKING:
    from tasks.settings import Settings

# The adapters by engine name (the registry: tasks/records/engines.py).
BUILTIN_ENGINES = {name: spec.adapter for name, spec in ENGINES.items()}

__all__ = ["BUILTIN_ENGINES", "OcrEngine", "PageResult", "RecognizeOptions", "Word",
           "engine_class", "resolve_engine"]


def resolve_engine(settings: Settings) -> str:
    """The engine this worker loads: `auto` becomes mlx-vlm when the model is present."""
    if settings.engine != "auto":
        return settings.engine
    from tasks.models.locate import loadable_model

    return "mlx-vlm" if loadable_model(settings) is not None else "tesseract"


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
