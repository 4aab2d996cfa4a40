"""What a client refuses at the door, before anything is stored or queued.

Runs in client processes: `OcrClient.submit` and `enqueue` (so submit.py, the Python
client and the HTTP API) call `admit` with a job's options, and `read_input` reads a
job's input within OCR_MAX_INPUT_MB. It applies the workers' own
checks of the options' shape (`JobRequest.from_kwargs`: output, mode, lang, callback
names), the syntax of the page selection, and two questions only the service's state
answers:

- is the engine an engine? A built-in (`tasks/records/engines.py`), a plugin this
  client's settings name, or one a live worker serves (its queue `ocr-<engine>`);
  else `unknown_engine` with the list.
- does a live worker run it? When OCR workers are live and none consumes the engine's
  queue, `engine_unavailable` names the `make` target that installs its packages.
  With no OCR worker live at all nothing can be told yet: the job is sent and the
  client's wait reports `no_worker` (`OcrClient.wait`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.errors import EngineUnavailable, InputNotFound, InputTooLarge, UnknownEngine
from tasks.queue.routing import is_job_queue, job_queue, queue_for_engine
from tasks.records.engines import engine_names, install_hint
from tasks.records.request import SOURCES, JobRequest, check_pages
from tasks.settings import Settings

ENGINE_QUEUE_PREFIX = queue_for_engine("")  # "ocr-": a queue named after an engine


def job_queues(queues: set[str]) -> set[str]:
    """Of a worker's queues, those jobs are sent to.

    No control or `<node>.dq2` queue, and no queue of one priority (quorum queues).
    """
    return {q for q in queues if is_job_queue(q)}


def ocr_queues(live: dict[str, set[str]]) -> set[str]:
    """The queues live OCR workers consume (control and direct queues left out)."""
    return job_queues(set().union(*live.values()))


def known_engines(settings: Settings, live: dict[str, set[str]]) -> tuple[str, ...]:
    """Engines a job may name: the registry's, this client's plugins, the live workers'."""
    served = sorted(q[len(ENGINE_QUEUE_PREFIX):] for q in ocr_queues(live)
                    if q.startswith(ENGINE_QUEUE_PREFIX))
    return tuple(dict.fromkeys([*engine_names(tuple(settings.engine_plugins)), *served]))


def admit(options: dict[str, Any], settings: Settings, live: dict[str, set[str]]) -> None:
    """Raise the job's error (BadRequest, InvalidPages, UnknownEngine, EngineUnavailable).

    `options` are `ocr.document`'s kwargs, with or without the input; `live` the
    queues of each live worker (`WorkerPresence.live_queues`).
    """
    engine = options.get("engine")
    engines = known_engines(settings, live)
    if isinstance(engine, str) and engine and engine not in engines:
        raise UnknownEngine(f"unknown engine {engine!r}; choose one of {', '.join(engines)}")
    shape = dict(options)
    if not any(shape.get(s) not in (None, "") for s in SOURCES):
        shape["path"] = "/"  # the input is checked apart (read, uploaded or named)
    JobRequest.from_kwargs(shape, engines)
    pages = options.get("pages")
    check_pages(pages if isinstance(pages, str) else None)
    served = ocr_queues(live)
    if isinstance(engine, str) and engine and served and job_queue(engine) not in served:
        raise EngineUnavailable(f"no live worker runs engine {engine!r}: start "
                                f"{install_hint(engine)}; nothing was sent")


def read_input(source: str | Path | bytes, settings: Settings) -> bytes:
    """The bytes of a job's input (a file or bytes); `input_too_large` past the limit."""
    limit = settings.max_input_bytes
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            size = path.stat().st_size
        except OSError:
            raise InputNotFound(f"cannot read {path}") from None
        if size > limit:
            raise InputTooLarge(f"{path.name} is larger than {settings.max_input_mb} MB")
        data = path.read_bytes()
    if len(data) > limit:
        raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
    return data
