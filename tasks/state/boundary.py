"""Connection errors at the Redis and broker boundaries become `TransientError`.

A Redis or broker restart during a job is not the job's fault: the calls that cross
the boundary (the stores of this package, the fan-out join, progress and page
publishing) first retry on their own for about `RETRY_SECONDS` (redis-py's `Retry`
for Redis, kombu's publish retry policy for the broker: `PUBLISH_RETRY_POLICY` in
tasks/queue/celery_config.py), then raise `TransientError` (retryable), which the
tasks retry with backoff. Never a page failure, never an `internal_error`.

Runs in every process that talks to Redis or the broker.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import redis
from kombu.exceptions import OperationalError
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from tasks.errors import TransientError

# What "Redis or the broker is unreachable" looks like: redis-py's errors (Redis as
# store, backend or broker; BusyLoadingError while a restarted Redis reads its AOF is a
# ConnectionError; READONLY from a server that is a replica now: the primary moved, as
# a managed endpoint's does in a failover), kombu's wrapper of any transport's
# connection error, and the OS's.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError, OperationalError,
    ConnectionError)
# What a redis-py client retries on a new connection (a failover's moved primary too).
RETRIED_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError)

# About this long, in-process, before a call gives up with TransientError.
RETRY_SECONDS = 30.0


def redis_retry() -> Retry:
    """redis-py's retry of our clients: jittered backoff 0.1 s doubling to 3 s, 20 tries."""
    return Retry(ExponentialWithJitterBackoff(base=0.1, cap=3.0), retries=20,
                 supported_errors=RETRIED_ERRORS)


@contextmanager
def transient(what: str) -> Iterator[None]:
    """Raise `TransientError` naming `what` for any connection error inside."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise TransientError(f"{what} is unreachable ({type(exc).__name__}); "
                             "the job is retried") from exc


# kombu 5.7's redis transport can fail a publish that its own retry carried through a
# broker restart with AttributeError: the retry hands back a channel whose connection
# it has closed. Only publishes are wrapped in this (`publishing`), never other code.
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (*CONNECTION_ERRORS, AttributeError)


@contextmanager
def publishing(what: str) -> Iterator[None]:
    """`transient` for message publishes: raise `TransientError` naming `what`."""
    try:
        yield
    except PUBLISH_ERRORS as exc:
        raise TransientError(f"{what} could not be sent ({type(exc).__name__}); "
                             "the job is retried") from exc


F = TypeVar("F", bound=Callable[..., Any])


def transient_calls(what: str) -> Callable[[F], F]:
    """Decorator form of `transient`, for store methods and task functions.

    The wrapper keeps `fn`'s signature (`__signature__`), so that Celery's argument
    check of a task sees the real parameters.
    """
    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            with transient(what):
                return fn(*args, **kwargs)
        call.__signature__ = inspect.signature(fn)  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]
    return wrap


C = TypeVar("C", bound=type)


def transient_methods(what: str) -> Callable[[C], C]:
    """Class decorator: every public method of a store raises `TransientError`."""
    def wrap(cls: C) -> C:
        for name, value in list(vars(cls).items()):
            if callable(value) and not name.startswith("_"):
                setattr(cls, name, transient_calls(what)(value))
        return cls
    return wrap
