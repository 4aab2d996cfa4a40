"""Redis state beside Celery's result backend.

Every key prefix (`keys`), input blobs, the result cache, outputs, job control, the
PDF fan-out join and metrics.
"""
