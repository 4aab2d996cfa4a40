#!/usr/bin/env python3
"""Procfile `redis` process: start the project's own Redis unless one answers at REDIS_URL.

The project's Redis binds to loopback, keeps an append-only file under var/redis,
takes the password of REDIS_URL when it has one, and refuses any command argument
longer than the settings' `redis_max_bulk_bytes` (proto-max-bulk-len: a message
holding an input of OCR_MAX_INPUT_MB, or an output of OCR_MAX_OUTPUT_MB). It holds at
most OCR_REDIS_MAXMEMORY_MB and evicts nothing (noeviction): full, it refuses writes. When another
Redis already answers, this process only waits: a Procfile runner (`make run`'s
scripts/supervise.py, like honcho) stops every process when one exits.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from urllib.parse import urlparse

import redis

from tasks.settings import Settings, SettingsError


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except SettingsError as exc:
        print(f"redis: {exc}", flush=True)
        return 2
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    parsed = urlparse(url)
    shown = f"{parsed.hostname}:{parsed.port or 6379}"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.AuthenticationError:
        print(f"redis: {shown} answers but refuses the password in REDIS_URL", flush=True)
        return 1
    except redis.ConnectionError:
        pass
    else:
        print(f"redis: using the server already answering at {shown}", flush=True)
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    if parsed.hostname not in ("127.0.0.1", "localhost", "::1"):
        print(f"redis: nothing answers at {shown}; start it there", flush=True)
        return 1
    server = shutil.which("redis-server")
    if server is None:
        print("redis: redis-server is not installed (Debian: apt-get install redis-server; "
              "macOS: brew install redis)", flush=True)
        return 1
    data = Path("var/redis").resolve()
    data.mkdir(parents=True, exist_ok=True)
    lines = ["bind 127.0.0.1", f"port {parsed.port or 6379}", f'dir "{data}"',
             "appendonly yes", "appendfsync everysec", 'save ""', "protected-mode yes",
             # No command argument longer than the largest input or output the service
             # takes: a huge message is refused here, never popped by a worker.
             f"proto-max-bulk-len {settings.redis_max_bulk_bytes}",
             # Full, it refuses writes and evicts nothing: every key the service writes
             # has a TTL, so a volatile-* policy could evict a queued job's input or a
             # running job's state (docs/deploy.md, "Redis's memory").
             f"maxmemory {settings.redis_maxmemory_mb}mb", "maxmemory-policy noeviction"]
    if parsed.password:
        lines.append(f'requirepass "{parsed.password}"')
    # A config file, not arguments, so the password never shows in `ps`.
    conf = data / "redis.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    conf.write_text("\n".join(lines) + "\n")
    print(f"redis: starting the project's own server at {shown} (data in {data})", flush=True)
    os.execv(server, [server, str(conf)])
    return 1  # not reached: execv replaces this process


if __name__ == "__main__":
    sys.exit(main())
