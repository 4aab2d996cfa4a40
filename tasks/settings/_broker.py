"""Settings of the broker and Redis: where messages and results go, and how Redis is reached.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
`redis_target` and `broker_target` are the typed records the one connection factory
(tasks/state/connection.py) connects with.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from tasks.records.redis_target import RedisTarget

from ._field import setting as _s
from ._redis_urls import is_redis_url, read_redis_url


@dataclass(frozen=True)
class BrokerSettings:
    """Redis, the Celery broker, and how long a delivered job may stay unacknowledged."""

    redis_url: str = _s("REDIS_URL", "redis://127.0.0.1:6379/0",
                        "Redis used as result backend and blob store, and as Celery "
                        "broker unless BROKER_URL is set: `redis://[user:password@]host:"
                        "port/db`, `rediss://...` (TLS, always verified), or Sentinel: "
                        "`sentinel://[:password@]host1:26379;sentinel://host2:26379/db` "
                        "(the password is the Redis servers'; docs/guarantees.md).",
                        secret=True)
    broker_url: str = _s("BROKER_URL", "",
                         "Celery broker; empty: REDIS_URL. `amqp://user:password@host:5672/"
                         "vhost` makes RabbitMQ the broker (docs/operations.md, Brokers); "
                         "Redis stays result backend and blob store. A Redis broker takes "
                         "the same forms as REDIS_URL.", secret=True)
    rabbitmq_queue_type: str = _s(
        "OCR_RABBITMQ_QUEUE_TYPE", "classic",
        "With RabbitMQ: `classic` (queues on one node, 10 message priorities) or `quorum` "
        "(replicated on a majority of a cluster's nodes, Raft). With `quorum` a "
        "confirmed message survives the loss of any minority of nodes, and each job "
        "queue gets a queue per priority instead of message priorities. The same on "
        "every host; BROKER_URL "
        "may list every node, `amqp://...@node1:5672/vhost;amqp://...@node2:5672/vhost` "
        "(docs/operations.md, Brokers).")
    redis_sentinel_master: str = _s("OCR_REDIS_SENTINEL_MASTER", "mymaster",
                                    "With a sentinel:// URL: the name of the primary the "
                                    "Sentinels watch.")
    redis_sentinel_password: str = _s("OCR_REDIS_SENTINEL_PASSWORD", "",
                                      "With a sentinel:// URL: the Sentinels' own password "
                                      "(empty: none).", secret=True)
    redis_sentinel_tls: bool = _s("OCR_REDIS_SENTINEL_TLS", "0",
                                  "With a sentinel:// URL: the Sentinels and the Redis "
                                  "servers they name speak TLS, verified against "
                                  "OCR_REDIS_TLS_CA_FILE (or the system's CAs).")
    redis_tls_ca_file: str = _s("OCR_REDIS_TLS_CA_FILE", "",
                                "CA certificates (PEM) that Redis's TLS certificate is "
                                "verified against; empty: the system's.")
    redis_tls_cert_file: str = _s("OCR_REDIS_TLS_CERT_FILE", "",
                                  "Client certificate (PEM) for Redis servers that ask "
                                  "for one (with OCR_REDIS_TLS_KEY_FILE).")
    redis_tls_key_file: str = _s("OCR_REDIS_TLS_KEY_FILE", "",
                                 "The client certificate's private key (PEM).")
    redis_min_replicas: int | None = _s(
        "OCR_REDIS_MIN_REPLICAS", "",
        "Replicas that must hold a job's message, input and ending before the service "
        "calls them kept (Redis WAIT). A job is accepted only then (else `transient`, "
        "the API's 503). A job's ending waits for them before its callbacks and its "
        "acknowledgement. Empty: 1 with Sentinel, 0 otherwise (set it for a managed "
        "Redis with replicas behind one address). docs/guarantees.md.")
    redis_replica_timeout: float = _s("OCR_REDIS_REPLICA_TIMEOUT", "2",
                                      "Seconds a write waits for OCR_REDIS_MIN_REPLICAS "
                                      "replicas; past it a job is not accepted "
                                      "(`transient`: send it again) and a worker goes on "
                                      "without them (logged).")
    redis_maxmemory_mb: int = _s(
        "OCR_REDIS_MAXMEMORY_MB", "1536",
        "The project's own Redis (`make run`, compose.yaml): its `maxmemory` in MiB, "
        "with `maxmemory-policy noeviction`. When full it refuses writes (`transient`) "
        "and drops nothing: no queued message, no running job's state. "
        "docs/deploy.md says what to set on a managed Redis.")
    events_quiet_seconds: float = _s(
        "OCR_EVENTS_QUIET_SECONDS", "5",
        "On a Redis broker: seconds a process sends no more of one kind of Celery event "
        "(`task-sent`, `task-progress`, a worker's heartbeat, ...) after one reached "
        "nobody (no Flower, no `celery events` running). Then it sends again, and goes "
        "on while anyone hears. A Flower that starts shows them within that time. 0: "
        "every event is sent. A task's endings, a worker's online and offline, and "
        "remote control are always sent (docs/operations.md, Monitoring).")
    visibility_timeout: int = _s("OCR_VISIBILITY_TIMEOUT", "900",
                                 "Cluster-wide seconds a job may stay delivered but "
                                 "unacknowledged: on Redis, after that the job is given to "
                                 "another worker (a dead worker's jobs wait this long); on "
                                 "RabbitMQ, the consumer timeout. Must be larger than every "
                                 "worker's OCR_HARD_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT; "
                                 "the same value on every host.")
    worker_liveness_seconds: float = _s(
        "OCR_WORKER_LIVENESS_SECONDS", "30",
        "On a Redis broker: seconds a worker may go without a heartbeat (its presence "
        "record, refreshed every few seconds) before the jobs it holds go to another "
        "worker (a killed or preempted host). A live worker checks every third of it. "
        "Past OCR_VISIBILITY_TIMEOUT the jobs go back regardless. A paused host that "
        "comes back after this window may still finish its jobs; each job ends once. "
        "The same value on every host (docs/guarantees.md).")

    @property
    def broker(self) -> str:
        """The Celery broker URL: BROKER_URL, or REDIS_URL when unset."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")

    @property
    def quorum_queues(self) -> bool:
        """RabbitMQ with quorum queues (OCR_RABBITMQ_QUEUE_TYPE=quorum)."""
        return self.broker_is_amqp and self.rabbitmq_queue_type == "quorum"

    @cached_property
    def redis_target(self) -> RedisTarget:
        """The Redis of results, stores and state (REDIS_URL); read once per settings."""
        return self.target_of(self.redis_url)

    @cached_property
    def broker_target(self) -> RedisTarget | None:
        """The broker's Redis; None when the broker is RabbitMQ. Read once per settings."""
        return self.target_of(self.broker) if is_redis_url(self.broker) else None

    def target_of(self, url: str) -> RedisTarget:
        """`url` read with this deployment's Sentinel, TLS and replica settings."""
        return read_redis_url(
            url, master=self.redis_sentinel_master,
            sentinel_password=self.redis_sentinel_password,
            sentinel_tls=self.redis_sentinel_tls, ca_file=self.redis_tls_ca_file,
            cert_file=self.redis_tls_cert_file, key_file=self.redis_tls_key_file,
            min_replicas=self.redis_min_replicas,
            replica_timeout=self.redis_replica_timeout)
