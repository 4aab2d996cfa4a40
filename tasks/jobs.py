"""One OCR job from kwargs to result: input, engine, result cache. No Celery here.

Runs in worker children, called by the `ocr.document` task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.documents import Progress, run_document
from tasks.inputs import JobRequest, read_input
from tasks.storage import cache_key

if TYPE_CHECKING:
    from tasks.runtime import EngineRegistry
    from tasks.storage import BlobStore, ResultCache
    from worker_config import Settings


def process_job(kwargs: dict[str, Any], settings: Settings, registry: EngineRegistry,
                blobs: BlobStore, cache: ResultCache,
                progress: Progress | None = None) -> dict[str, Any]:
    """Validate, read the input, reuse a cached result or run the engine."""
    request = JobRequest.from_kwargs(kwargs, settings)
    data = read_input(kwargs, request, settings, blobs)
    engine_name = request.engine or registry.primary
    loaded = registry.get(engine_name)  # fails fast when this child's load failed
    key = None
    if settings.cache_results:
        key = cache_key(data, request.cache_options(engine_name, loaded.engine.model))
        hit = cache.get(key)
        if hit is not None:
            return {**hit, "filename": request.filename, "cached": True}
    result = run_document(data, request, loaded.engine, settings, progress)
    result["engine"] = registry.describe(engine_name)
    if key is not None:
        cache.put(key, result)
    return {**result, "cached": False}
