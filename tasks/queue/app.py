"""Construction of the Celery apps from the settings.

`create_app` builds the worker's app (task modules, signal handlers, remote control):
it runs in the worker parent and children, beat and Flower. `sending_app` builds the
app clients use (submit.py, the Python client, the HTTP API): it sends tasks by name
and reads results, and imports no task module, so no engine or image library.

The worker's app keeps document text out of the worker's log. Celery's tracer logs
`Task ocr.document[id] succeeded in 1.2s: {result}` at INFO, and the result holds page
texts (of decrypted PDFs too). A filter on Celery's own `celery.app.trace` logger
replaces the result with a placeholder (`HideTaskResults`). It is the supported hook:
the tracer passes its context as the record's arguments, and as `extra["data"]` for
custom handlers. The task name, id and run time stay, and so does our `ocr.job` line.
"""

from __future__ import annotations

import logging
import sys

from celery.app import trace

from tasks.broker.transport import register_names
from tasks.queue.celery_config import celery_config, worker_app_config
from tasks.queue.ocr_celery import OcrCelery
from tasks.settings import Settings, SettingsError

TASK_MODULES = ("tasks.queue.job_task", "tasks.queue.page_tasks", "tasks.queue.control_tasks",
                "tasks.queue.maintenance_tasks", "tasks.queue.golden", "tasks.batch_worker")


def create_app(settings: Settings) -> OcrCelery:
    """A configured app; worker-side signal handlers are connected here.

    The worker's engine is resolved here, once (OCR_ENGINE=auto looks at the model
    folder), and handed to what depends on it: the pool, queues, telemetry and control.
    """
    register_names()  # the transport's names, for a broker URL that uses one
    app = OcrCelery("ocr", include=list(TASK_MODULES), set_as_current=True)
    app.ocr_settings = settings
    from tasks.engines import resolve_engine  # here: clients import this module too

    app.ocr_engine = resolve_engine(settings)
    app.conf.update(worker_app_config(settings, app.ocr_engine))
    # The remote-control command must be registered in the worker and in the
    # `celery control` command line alike, so it is imported with the app.
    import tasks.queue.control  # noqa: F401
    from tasks.queue.signals import connect_signals

    connect_signals(app, settings)
    from tasks.queue.telemetry import connect_telemetry

    connect_telemetry(settings, app.ocr_engine)  # after connect_signals: its handlers run first
    from tasks.queue.parent_endings import connect_parent_endings, connect_refusals

    connect_parent_endings(app)
    connect_refusals(app)
    from tasks.queue.presence import connect_presence

    connect_presence(settings)  # the worker parent's presence record (tasks/state/liveness.py)
    hide_task_results()
    return app


HIDDEN = "(result not logged)"


class HideTaskResults(logging.Filter):
    """Blanks `return_value` in the tracer's success records; lets every record pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg is trace.LOG_SUCCESS and isinstance(record.args, dict):
            context = {**record.args, "return_value": HIDDEN}
            record.args = context
            if isinstance(getattr(record, "data", None), dict):
                record.data = context
        return True


def hide_task_results() -> None:
    """Install the filter once on `celery.app.trace`."""
    logger = logging.getLogger(trace.logger.name)
    if not any(isinstance(f, HideTaskResults) for f in logger.filters):
        logger.addFilter(HideTaskResults())


def sending_app(settings: Settings) -> OcrCelery:
    """A Celery app that only sends tasks by name and reads their results.

    No task modules and no worker signals: those pull in the image pipeline.
    """
    register_names()
    app = OcrCelery("ocr", set_as_current=False)
    app.ocr_settings = settings
    app.ocr_engine = settings.engine  # runs no engine (`auto` stays as it is)
    app.conf.update(celery_config(settings))
    return app


_app: OcrCelery | None = None


def get_app() -> OcrCelery:
    """The process's app, built from the environment on first use.

    `celery -A tasks` (worker, control, beat, Flower) builds it as it starts: settings it
    cannot use (a placeholder secret, a bad value) stop the process with one line naming
    the variable, exit status 2.
    """
    global _app
    if _app is None:
        try:
            settings = Settings.from_env()
        except SettingsError as exc:
            print(f"refused to start: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        _app = create_app(settings)
    return _app
