"""Per-process engine registry: load once in the pool child, reuse, release.

Lives in each worker pool child. `worker_process_init` calls `init_process()` to load
the worker's engine (the one its parent resolved at start: a recycled child loads the
same); tasks call `current().get(name)`; `task_postrun` calls `after_task()`. Other
engines a job asks for, and the engines the primary leans on (orientation, fallback),
are loaded on first use, and so is an engine again after `unload()` (remote control,
idle release: tasks/engines/release.py). A failed load is remembered so that every task
of that child fails fast with `engine_unavailable`.

A vlm-api worker runs a thread pool instead of children (tasks/queue/celery_config.py):
one registry in the worker process, `threaded`, loads under a lock, and an engine that
is not `thread_safe` (tesseract's handles) is served by an `EnginePool`: each call takes
an instance no other thread holds, at most one per core, created on first need.
"""

from __future__ import annotations

import inspect
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tasks.engines import engine_class, lang_id
from tasks.errors import EngineUnavailable, OcrError

if TYPE_CHECKING:
    from tasks.engines import OcrEngine
    from tasks.settings import Settings

log = logging.getLogger(__name__)


def engine_for_job(engine: str | None, lang: str | None, primary: str, settings: Settings,
                   failed: Collection[str] = ()) -> str:
    """The engine a job runs on: its own, else its `lang`'s (OCR_LANG_ENGINES), else `primary`.

    The one answer for a pool child (`ResidentEngines.for_job`, which also falls back to
    `primary` when the routed engine fails to load here) and for a worker parent that
    ends a job itself (tasks/queue/parent_endings.py), so both name the same engine.
    """
    if engine:
        return engine
    from tasks.engines.lang_routing import routed_engine

    return routed_engine(lang, primary, settings, failed)


@dataclass
class LoadedEngine:
    engine: OcrEngine
    load_seconds: float
    model_entry: str | None = None  # the OCR_MODEL_DIR entry it loaded, if any


class EnginePool:
    """Instances of an engine that is not thread-safe, one per caller at a time.

    Looks like the engine (its attributes are the first instance's, its class methods
    the engine class's: callers ask the engine, never `type(engine)`); every other
    method call takes a free instance, or makes one while fewer than `size` exist, or
    waits for one, so that no handle (a tesseract API) is ever used by two threads at
    once. `release_cache` frees the instances free now: it makes none, waits for none.
    """

    def __init__(self, first: OcrEngine, make: Callable[[], OcrEngine], size: int) -> None:
        self._first = first
        self._make = make
        self._size = max(1, size)
        self._free: queue.SimpleQueue[OcrEngine] = queue.SimpleQueue()
        self._free.put(first)
        self._all = [first]
        self._lock = threading.Lock()
        self._count = 1  # instances made or being made

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._first, name)
        if not callable(value) or isinstance(inspect.getattr_static(self._first, name, None),
                                             (classmethod, staticmethod)):
            return value  # no instance state: nothing to hold a handle of

        def call(*args: Any, **kwargs: Any) -> Any:
            engine = self._take()
            try:
                return getattr(engine, name)(*args, **kwargs)
            finally:
                self._free.put(engine)

        return call

    def _take(self) -> OcrEngine:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            grow = self._count < self._size
            self._count += grow
        if not grow:
            return self._free.get()
        try:
            engine = self._make()
        except BaseException:
            with self._lock:
                self._count -= 1
            raise
        engine.bind_peers(self._first.peer)
        with self._lock:
            self._all.append(engine)
        return engine

    def release_cache(self) -> dict[str, float]:
        """Free the per-task caches of the instances no thread holds now."""
        idle: list[OcrEngine] = []
        while True:
            try:
                idle.append(self._free.get_nowait())
            except queue.Empty:
                break
        memory: dict[str, float] = {}
        try:
            for engine in idle:
                memory.update(engine.release_cache())
        finally:
            for engine in idle:
                self._free.put(engine)
        return memory

    def close(self) -> None:
        with self._lock:
            engines, self._all = self._all, []
        for engine in engines:
            engine.close()


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
    # A thread pool's registry: loads under `_lock`, thread-unsafe engines pooled.
    threaded: bool = False
    # What else the process loaded at its start, and in how many seconds.
    preloaded: dict[str, float] = field(default_factory=dict)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _counting: threading.Lock = field(default_factory=threading.Lock)  # the count, `used`

    def loaded(self) -> list[tuple[str, LoadedEngine]]:
        """The engines loaded now, by name: the one way to go over them.

        A list taken at once: in a thread pool another thread may load or unload an
        engine meanwhile, which a pass over `engines` itself would meet mid-way
        (`dictionary changed size during iteration`).
        """
        return list(self.engines.items())

    def get(self, name: str | None = None) -> LoadedEngine:
        """The loaded engine `name` (default: this worker's), loading it on first use."""
        name = name or self.primary
        loaded = self.engines.get(name)
        if loaded is None:
            with self._lock:  # one load per engine, whatever the threads asking
                if name in self.failures:
                    raise EngineUnavailable(f"engine {name} failed to load in this "
                                            f"worker: {self.failures[name]}")
                if name not in self.engines:
                    self.load(name)
                loaded = self.engines[name]
        with self._counting:
            self.used.add(name)
        return loaded

    def for_job(self, engine: str | None, lang: str | None) -> str:
        """The engine a job runs with: its own, else its `lang`'s, else this worker's.

        The `lang`'s is the one OCR_LANG_ENGINES gives (loaded here; when its load
        fails, this worker's own engine reads the job).
        """
        name = engine_for_job(engine, lang, self.primary, self.settings, self.failures)
        if not engine and name != self.primary:
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
        if self.threaded and not engine.thread_safe:
            cls = type(engine)
            engine = EnginePool(engine, lambda: cls.load(self.settings),  # type: ignore[assignment]
                                os.cpu_count() or 1)
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
        entries = {name: loaded.model_entry for name, loaded in self.loaded()}
        entries.update(self.loading)
        return {name: entry for name, entry in entries.items() if entry}

    def take_used_models(self) -> set[str]:
        """Model-directory entries of the engines used since the last call."""
        with self._counting:
            used, self.used = self.used, set()
        return {loaded.model_entry for name in used
                if (loaded := self.engines.get(name)) is not None and loaded.model_entry}

    def after_task(self) -> dict[str, float]:
        """Count the task and free per-task caches (MLX's buffer cache)."""
        with self._counting:
            self.tasks_in_process += 1
        memory: dict[str, float] = {}
        for _, loaded in self.loaded():
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

    def loaded_line(self) -> str:
        """What this process holds, for its start-up line: engines, models, the rest."""
        parts = [f"{name} ({loaded.engine.model or 'no model'}, {loaded.load_seconds:.2f} s)"
                 for name, loaded in self.loaded()]
        parts += [f"{name} ({seconds:.2f} s)" for name, seconds in self.preloaded.items()]
        parts += [f"{name} failed ({why})" for name, why in self.failures.items()]
        return ", ".join(parts) or "nothing"

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
_creating = threading.Lock()


def init_process(settings: Settings, primary: str,
                 on_load: Callable[[ResidentEngines], None] | None = None,
                 threaded: bool = False) -> ResidentEngines:
    """Create this process's registry and load `primary` (errors remembered).

    `primary` is the engine the worker parent resolved at start. In a pool child
    (prefork) the engine whose orientation check the primary uses reads every page too:
    it is loaded now, so that the child's memory baseline, from which its recycling
    counts growth (tasks/queue/pool.py), includes it; a lazy load would count as growth
    and recycle the child after its first task. A thread pool's one process (vlm-api)
    has no such limit: there the engines it leans on (orientation check, fallback) load
    when first needed. An engine that takes a `lang` may read `lang=auto` pages: the
    language identifier is loaded too. One line then says what the process holds, so
    that no first job pays for a load inside its time limit.
    """
    global _engines
    started = time.perf_counter()
    _engines = ResidentEngines(settings=settings, primary=primary, on_load=on_load,
                               threaded=threaded)
    try:
        engine = _engines.get(primary).engine
        helper = engine.orientation_engine
        if helper is not None and not threaded:
            _engines.get(helper)
        if engine.languages(settings) is not None:  # it may read `lang=auto` pages
            loading = time.perf_counter()
            lang_id.load()  # ~0.45 s: not inside the first `auto` page's time limit
            _engines.preloaded["language identifier"] = time.perf_counter() - loading
    except OcrError:
        pass  # recorded in `failures`; tasks of this child fail fast with it
    log.info("process %d ready in %.2f s, loaded: %s", os.getpid(),
             time.perf_counter() - started, _engines.loaded_line())
    return _engines


def current(settings: Settings) -> ResidentEngines:
    """The registry of this process; created here where no worker_process_init ran.

    That is a process that built no worker app: its engine is resolved from `settings`.
    """
    if _engines is not None:
        return _engines
    with _creating:
        if _engines is None:
            from tasks.engines import resolve_engine

            init_process(settings, resolve_engine(settings))
    assert _engines is not None
    return _engines


def existing() -> ResidentEngines | None:
    """The registry of this process if it has one (a control worker has none)."""
    return _engines


def shutdown_process() -> None:
    """Release the engines at child shutdown."""
    global _engines
    if _engines is not None:
        _engines.unload()
        _engines = None

