"""Per-process engine registry: load once in the pool child, reuse, release.

Lives in each worker pool child. `worker_process_init` calls `init_process()` to load
the worker's engine; tasks call `current().get(name)`; `task_postrun` calls
`after_task()`. Other engines a job asks for are loaded on first use. A failed load is
remembered so that every task of that child fails fast with `engine_unavailable`.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.engines import engine_class
from tasks.errors import EngineUnavailable, OcrError

if TYPE_CHECKING:
    from tasks.engines import OcrEngine
    from worker_config import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedEngine:
    engine: OcrEngine
    load_seconds: float


@dataclass
class EngineRegistry:
    """The engines of one process and what it has done with them."""

    settings: Settings
    primary: str
    engines: dict[str, LoadedEngine] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    tasks_in_process: int = 0
    load_count: int = 0
    last_memory: dict[str, float] = field(default_factory=dict)

    def get(self, name: str | None = None) -> LoadedEngine:
        """The loaded engine `name` (default: this worker's), loading it on first use."""
        name = name or self.primary
        if name in self.failures:
            raise EngineUnavailable(f"engine {name} failed to load in this worker: "
                                    f"{self.failures[name]}")
        if name not in self.engines:
            self.load(name)
        return self.engines[name]

    def load(self, name: str) -> None:
        started = time.perf_counter()
        try:
            engine = engine_class(name, self.settings).load(self.settings)
        except OcrError as exc:
            self.failures[name] = exc.message
            log.error("engine load failed: %s (pid %d): %s", name, os.getpid(), exc.message)
            raise
        except Exception as exc:
            # An adapter's library can fail in many ways; keep the type, not the text.
            reason = f"{type(exc).__name__} while loading"
            self.failures[name] = reason
            log.exception("engine load failed: %s (pid %d)", name, os.getpid())
            raise EngineUnavailable(f"engine {name}: {reason}") from exc
        seconds = time.perf_counter() - started
        self.engines[name] = LoadedEngine(engine, seconds)
        self.load_count += 1
        log.info("engine loaded: %s model=%s in %.2fs (pid %d)",
                 name, engine.model, seconds, os.getpid())

    def after_task(self) -> dict[str, float]:
        """Count the task and free per-task caches (MLX's buffer cache)."""
        self.tasks_in_process += 1
        memory: dict[str, float] = {}
        for loaded in self.engines.values():
            memory.update(loaded.engine.release_cache())
        self.last_memory = memory
        if memory:
            log.debug("memory after task (pid %d): %s", os.getpid(), memory)
        return memory

    def unload(self) -> list[str]:
        """Close every engine; the next task loads again. Returns the names closed."""
        names = list(self.engines)
        for name in names:
            self.engines.pop(name).engine.close()
            log.info("engine unloaded: %s (pid %d)", name, os.getpid())
        self.failures.clear()
        return names

    def describe(self, name: str) -> dict[str, Any]:
        """Provenance for results: which engine, model and process ran the job."""
        loaded = self.engines[name]
        return {
            "name": name,
            "model": loaded.engine.model,
            "pid": os.getpid(),
            "tasks_in_process": self.tasks_in_process + 1,
            "load_seconds": round(loaded.load_seconds, 3),
        }


_registry: EngineRegistry | None = None


def init_process(settings: Settings) -> EngineRegistry:
    """Create this process's registry and load its primary engine (errors remembered)."""
    global _registry
    _registry = EngineRegistry(settings=settings, primary=settings.resolve_engine())
    try:
        _registry.load(_registry.primary)
    except OcrError:
        pass  # recorded in `failures`; tasks of this child fail fast with it
    return _registry


def current(settings: Settings) -> EngineRegistry:
    """The registry of this process; created here where no worker_process_init ran."""
    return _registry if _registry is not None else init_process(settings)


def shutdown_process() -> None:
    """Release the engines at child shutdown."""
    global _registry
    if _registry is not None:
        _registry.unload()
        _registry = None


def reset_for_tests() -> None:
    """Forget this process's registry without closing anything (unit tests)."""
    global _registry
    _registry = None
