"""Remote-control commands `unload_model`, `languages` and `model_directory`.

All run in the worker parent (MainProcess).

`celery -A tasks control unload_model`, or `submit.py models --unload`. The parent
holds no engine (they live in the pool children), so it sends each pool child the
release signal (tasks/engines/release.py): each child closes its engines and clears MLX's cache
now, or after the task it is running, and loads them again on its next task. The
control worker answers that it has none.

Imported by `create_app`, so the worker and the `celery control` command line both know
the command.
"""

from __future__ import annotations

from typing import Any

from celery.utils.nodenames import nodesplit
from celery.worker.control import control_command

from tasks.engines import engine_class, release
from tasks.engines.auto_lang import choosable


@control_command(help="Make every pool child release its engines (reloaded on next task).")
def unload_model(state: Any, **_: Any) -> dict[str, Any]:
    """Signal every pool child of this worker; reply with the pids signalled.

    The control worker holds no engine by design: its reply says so, as nothing to do.
    """
    if state.consumer.app.ocr_settings.worker_role == "control":
        return {"ok": "no engine (control)", "pids": []}
    info = state.consumer.pool.info
    pids = info.get("processes") if isinstance(info, dict) else None
    if not pids:
        return {"error": "this worker's pool has no child processes (prefork pool only)"}
    asked = release.signal_children(pids)
    return {"ok": f"release requested in {len(asked)} pool children", "pids": asked}


@control_command(help="The languages this worker's engine reads (a job's `lang`).")
def languages(state: Any, **_: Any) -> dict[str, Any]:
    """Reply with the engine, its default language and the languages it has.

    A live answer from each worker (`OcrClient.languages()`, `submit.py langs`): no
    registration to renew or to outlive a worker. The parent only lists traineddata
    files; no engine is loaded here.
    """
    settings = state.consumer.app.ocr_settings
    name = state.consumer.app.ocr_engine
    cls = engine_class(name, settings)
    langs = cls.languages(settings)
    # `default`: the engine's language set; `job_default`: what a job without `lang`
    # asks for (OCR_LANG: auto unless set), which `submit.py langs` shows.
    return {"engine": name,
            "default": cls.default_language(settings) if langs is not None else None,
            "job_default": settings.default_lang if langs is not None else None,
            "languages": langs,
            # Those read with a tessdata_fast model (Debian's), shown as such.
            "fast": cls.fast_languages(settings) if langs is not None else None,
            # What `lang=auto` may read each script's pages in here.
            "auto": choosable(settings, langs) if langs is not None else None}


@control_command(help="Reply with this worker's host and model directory (audit fan-out).")
def model_directory(state: Any, **_: Any) -> dict[str, Any]:
    """Where this worker's models are (its host and resolved OCR_MODEL_DIR).

    The every-host audit picks one worker per (host, directory) from these replies
    (tasks/queue/maintenance_tasks.py).
    """
    settings = state.consumer.app.ocr_settings
    return {"host": nodesplit(state.hostname)[1], "model": settings.model,
            "model_dir": str(settings.model_dir.resolve()),
            "role": settings.worker_role}
