"""A job's life from request to its one exit: process, fan out, merge, cancel, end.

No Celery here: the queue layer passes in the stores and the hooks that publish
results and fire callbacks. Runs in worker pool children (and in the worker parent for
endings it sees first: hard kills, expiries).
"""
