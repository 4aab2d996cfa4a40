"""Keep document text out of the worker's log: Celery's "succeeded" line without the result.

Runs in every process that builds the app; it matters in worker pool children, where
Celery's tracer logs `Task ocr.document[id] succeeded in 1.2s: {result}` at INFO, the
result holding page texts (of decrypted PDFs too). A filter on Celery's own
`celery.app.trace` logger (the supported hook: the tracer passes its context as the
record's arguments and `extra["data"]` for custom handlers) replaces the result with
a placeholder; the task name, id and run time stay, and so does our `ocr.job` line.
"""

from __future__ import annotations

import logging

from celery.app import trace

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
