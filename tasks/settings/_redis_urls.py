"""Redis URLs read into `RedisTarget` records, direct or through Sentinel.

Direct: `redis://`, `rediss://`, `unix://`; Sentinel:
`sentinel://[:PASSWORD@]host1:26379;sentinel://host2:26379/DB`.

Pure; runs wherever `Settings.from_env()` runs (every process). A URL that cannot be
used raises ValueError with the reason; the settings name the variable.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from tasks.records.redis_target import RedisTarget

DIRECT_SCHEMES = ("redis", "rediss", "unix")
SENTINEL_SCHEME = "sentinel"
SENTINEL_PORT = 26379


def read_redis_url(url: str, *, master: str, sentinel_password: str, sentinel_tls: bool,
                   ca_file: str, cert_file: str, key_file: str, min_replicas: int | None,
                   replica_timeout: float) -> RedisTarget:
    """The `RedisTarget` of `url`; ValueError when it is not a Redis or Sentinel URL.

    `min_replicas` None: 1 behind Sentinel (a primary with replicas), 0 otherwise.
    """
    scheme = url.partition("://")[0].lower()
    tls_files: dict[str, Any] = {"ca_file": ca_file or None, "cert_file": cert_file or None,
                                 "key_file": key_file or None}
    if bool(cert_file) != bool(key_file):
        raise ValueError("a client certificate needs both OCR_REDIS_TLS_CERT_FILE and "
                         "OCR_REDIS_TLS_KEY_FILE")
    if scheme in DIRECT_SCHEMES:
        parts = urlsplit(url)
        if scheme != "unix" and not parts.hostname:
            raise ValueError("a redis:// or rediss:// URL names a host")
        try:
            db = int((parts.path or "/0").strip("/") or 0) if scheme != "unix" else 0
        except ValueError:
            raise ValueError("the path of a Redis URL is a database number") from None
        return RedisTarget(url=url, db=db, username=_part(parts.username),
                           password=_part(parts.password), tls=scheme == "rediss",
                           min_replicas=0 if min_replicas is None else min_replicas,
                           replica_timeout=replica_timeout, **tls_files)
    if scheme != SENTINEL_SCHEME:
        raise ValueError("expected redis://, rediss://, unix:// or sentinel:// "
                         "(sentinel://host1:26379;sentinel://host2:26379/0)")
    sentinels: list[tuple[str, int]] = []
    username = password = None
    db = 0
    for chunk in url.split(";"):
        parts = urlsplit(chunk.strip())
        if parts.scheme.lower() != SENTINEL_SCHEME or not parts.hostname:
            raise ValueError(f"{chunk!r} is not sentinel://host:port; Sentinels are "
                             "separated by ;")
        try:
            port = parts.port or SENTINEL_PORT
        except ValueError:
            raise ValueError(f"{chunk!r}: the port is not a number") from None
        sentinels.append((parts.hostname, port))
        username = username or _part(parts.username)
        password = password or _part(parts.password)
        if parts.path.strip("/"):
            try:
                db = int(parts.path.strip("/"))
            except ValueError:
                raise ValueError("the path of a Sentinel URL is a database number") \
                    from None
    if not master:
        raise ValueError("OCR_REDIS_SENTINEL_MASTER names the primary the Sentinels watch")
    return RedisTarget(url=url, sentinels=tuple(sentinels), master=master, db=db,
                       username=username, password=password,
                       sentinel_password=sentinel_password or None, tls=sentinel_tls,
                       min_replicas=1 if min_replicas is None else min_replicas,
                       replica_timeout=replica_timeout, **tls_files)


def is_redis_url(url: str) -> bool:
    """Whether `url` names Redis (directly or through Sentinel), not another broker."""
    return url.partition("://")[0].lower() in (*DIRECT_SCHEMES, SENTINEL_SCHEME)


def _part(value: str | None) -> str | None:
    return unquote(value) if value else None
