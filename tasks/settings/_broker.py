"""Settings of the broker and Redis: where messages and results go.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._field import setting as _s


@dataclass(frozen=True)
class BrokerSettings:
    """Redis, the Celery broker, and how long a delivered job may stay unacknowledged."""

    redis_url: str = _s("REDIS_URL", "redis://127.0.0.1:6379/0",
                        "Redis used as result backend and blob store, and as Celery "
                        "broker unless BROKER_URL is set.")
    broker_url: str = _s("BROKER_URL", "",
                         "Celery broker; empty: REDIS_URL. `amqp://user:password@host:5672/"
                         "vhost` makes RabbitMQ the broker (docs/operations.md, Brokers); "
                         "Redis stays result backend and blob store.")
    visibility_timeout: int = _s("OCR_VISIBILITY_TIMEOUT", "900",
                                 "Cluster-wide seconds a job may stay delivered but "
                                 "unacknowledged: on Redis, after that the job is given to "
                                 "another worker (a dead worker's jobs wait this long); on "
                                 "RabbitMQ, the consumer timeout. Must be larger than every "
                                 "worker's OCR_HARD_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT; "
                                 "the same value on every host.")

    @property
    def broker(self) -> str:
        """The Celery broker URL: BROKER_URL, or REDIS_URL when unset."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")
