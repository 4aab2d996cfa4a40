"""Celery glue: the app, the public tasks, signal handlers, remote control, telemetry.

The only floor that builds Celery's app, tasks and signal handlers. Above it, the
client (`tasks/client.py`) builds a send-only app of its own; below it, Celery's
packages appear only for their types (billiard's time-limit exceptions in
`tasks/errors.py`, kombu's connection errors in `tasks/state/boundary.py`, the
crontab parser in `tasks/settings/_checks.py`). Tasks here are thin: they decode a
message into typed records, call `tasks.lifecycle`, and let Celery retry what is
retryable.
"""
