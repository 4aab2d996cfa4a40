"""Per-process engine registry: load once in the pool child, reuse, release.

Lives in each worker pool child. `worker_process_init` calls `init_process()` to load
the worker's engine; tasks call `current().get(name)`; `task_postrun` calls
`after_task()`. Other engines a job asks for are loaded on first use, and so is an
engine again after `unload()` (remote control, idle release: tasks/engines/release.py). A failed
load is remembered so that every task of that child fails fast with
`engine_unavailable`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.engines import engine_class, resolve_engine
from tasks.errors import EngineUnavailable, OcrError

if TYPE_CHECKING:
    from tasks.engines import OcrEngine
    from tasks.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class LoadedEngine:
    engine: OcrEngine
    load_seconds: float
    model_entry: str | None = None  # the OCR_MODEL_DIR entry it loaded, if any


@dataclass
class ResidentEngines:
    """The engines of one process and what it has done with them."""

    settings: Settings
    primary: str
    engines: dict[str, LoadedEngine] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    tasks_in_process: int = 0
    load_count: int = 0
    last_memory: dict[str, float] = field(default_factory=dict)
    # Called before and after each load (in the thread that loads): registration of
    # the models in use must cover the load itself.
    on_load: Callable[[ResidentEngines], None] | None = None
    loading: dict[str, str | None] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    def get(self, name: str | None = None) -> LoadedEngine:
        """The loaded engine `name` (default: this worker's), loading it on first use."""
        name = name or self.primary
        if name in self.failures:
            raise EngineUnavailable(f"engine {name} failed to load in this worker: "
                                    f"{self.failures[name]}")
        if name not in self.engines:
            self.load(name)
        self.used.add(name)
        return self.engines[name]

    def for_job(self, engine: str | None, lang: str | None) -> str:
        """The engine a job runs with: its own, else its `lang`'s, else this worker's.

        The `lang`'s is the one OCR_LANG_ENGINES gives (loaded here; when its load
        fails, this worker's own engine reads the job).
        """
        if engine:
            return engine
        from tasks.engines.lang_routing import routed_engine

        name = routed_engine(lang, self.primary, self.settings, self.failures)
        if name != self.primary:
            try:
                self.get(name)
            except OcrError:
                return self.primary  # logged by `load`; the job is read all the same
        return name

    def load(self, name: str) -> None:
        started = time.perf_counter()
        try:
            engine, entry = self._construct(name)
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
        engine.bind_peers(lambda other: self.get(other).engine)
        self.engines[name] = LoadedEngine(engine, seconds, entry)
        self.loading.pop(name, None)
        self.load_count += 1
        log.info("engine loaded: %s model=%s in %.2fs (pid %d)",
                 name, engine.model, seconds, os.getpid())
        self._notify()

    def _construct(self, name: str) -> tuple[OcrEngine, str | None]:
        cls = engine_class(name, self.settings)
        entry = cls.model_entry(self.settings)
        self.loading[name] = entry
        self._notify()  # registered as in use before its files are read
        loaded = False
        try:
            engine = cls.load(self.settings)
            loaded = True
        finally:
            if not loaded:
                self.loading.pop(name, None)
                self._notify()
        return engine, entry

    def _notify(self) -> None:
        if self.on_load is not None:
            self.on_load(self)

    def model_entries(self) -> dict[str, str]:
        """Model-directory entries of the engines loaded or being loaded, by engine."""
        entries = {name: loaded.model_entry for name, loaded in list(self.engines.items())}
        entries.update(self.loading)
        return {name: entry for name, entry in entries.items() if entry}

    def take_used_models(self) -> set[str]:
        """Model-directory entries of the engines used since the last call."""
        used, self.used = self.used, set()
        return {loaded.model_entry for name in used
                if (loaded := self.engines.get(name)) is not None and loaded.model_entry}

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
        """Close every engine; the next task loads again. Returns the names closed.

        Runs in the child's main thread, also from the release signal handler; it does
        no Redis or other I/O besides logging.
        """
        names = []
        for name in list(self.engines):
            loaded = self.engines.pop(name, None)
            if loaded is None:
                continue  # closed meanwhile by a release signal handled inside this loop
            loaded.engine.close()
            names.append(name)
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


_engines: ResidentEngines | None = None


def init_process(settings: Settings,
                 on_load: Callable[[ResidentEngines], None] | None = None) -> ResidentEngines:
    """Create this process's registry and load its primary engine (errors remembered)."""
    global _engines
    _engines = ResidentEngines(settings=settings, primary=resolve_engine(settings),
                               on_load=on_load)
    try:
        _engines.load(_engines.primary)
        # The engine whose orientation check the primary uses reads every page too:
        # loaded now, so that the child's memory baseline includes it.
        helper = _engines.engines[_engines.primary].engine.orientation_engine
        if helper is not None:
            _engines.get(helper)
    except OcrError:
        pass  # recorded in `failures`; tasks of this child fail fast with it
    return _engines


def current(settings: Settings) -> ResidentEngines:
    """The registry of this process; created here where no worker_process_init ran."""
    return _engines if _engines is not None else init_process(settings)


def existing() -> ResidentEngines | None:
    """The registry of this process if it has one (a control worker has none)."""
    return _engines


def shutdown_process() -> None:
    """Release the engines at child shutdown."""
    global _engines
    if _engines is not None:
        _engines.unload()
        _engines = None

