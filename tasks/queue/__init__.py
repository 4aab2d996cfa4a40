"""Celery glue: the app, the public tasks, signal handlers, remote control, telemetry.

The only room that imports Celery. Tasks here are thin: they decode a message into
typed records, call `tasks.lifecycle`, and let Celery retry what is retryable.
"""
