"""Where a process's Redis is and how to reach it: one typed record for every process.

Built by the settings (`Settings.redis_target`, `Settings.broker_target`, parsed and
validated in tasks/settings/_redis_urls.py) and handed to the one connection factory,
tasks/state/connection.py, which every process uses: the stores, the HTTP API, the
worker parent and children, beat, Flower, the metrics exporter, the command lines.
Pure data; runs in every process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RedisTarget:
    """One Redis deployment: a server at an address, or a primary named by Sentinels.

    `url` is the configured URL (`redis://`, `rediss://`, `unix://` or
    `sentinel://h1:26379;sentinel://h2:26379/DB`). A direct URL names the server
    itself (a fixed address may still move: a managed Redis's endpoint follows its
    failover); with `sentinels` the primary is asked of them by name (`master`) at
    every (re)connection. `tls` means verified TLS always: `rediss://`, or
    OCR_REDIS_SENTINEL_TLS for the Sentinels and the servers they name.
    `min_replicas` is how many replicas must hold a write before the service calls it
    kept (`WAIT`), within `replica_timeout` seconds.
    """

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = "mymaster"
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    min_replicas: int = 0
    replica_timeout: float = 2.0

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def same_server(self, other: RedisTarget) -> bool:
        """Whether `other` is this server (or Sentinels' primary) as this user, any db.

        A server's PUB/SUB spans its databases: what either publishes reaches the same
        subscribers. Told by address, so one server named two ways counts as two.
        """
        return self._server() == other._server()

    def _server(self) -> tuple[object, ...]:
        where: tuple[object, ...]
        if self.sentinels:
            where = (self.sentinels, self.master)
        else:
            parts = urlsplit(self.url)
            where = (parts.scheme, parts.hostname, parts.port,
                     parts.path if parts.scheme == "unix" else "")
        return (where, self.username, self.password, self.tls, self.ca_file,
                self.cert_file, self.key_file)

    @property
    def masked(self) -> str:
        """The URL without passwords, to show in messages and logs."""
        return ";".join(_masked(part) for part in self.url.split(";"))


def _masked(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}:***@{host}" if colon else url
