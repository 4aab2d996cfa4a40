#!/usr/bin/env python3
"""Procfile `flower` process: Flower with basic auth unless explicitly opened on loopback.

- FLOWER_BASIC_AUTH=user:password (Flower's own variable): used as it is.
- OCR_FLOWER_OPEN=1: no auth, and only when the address is a loopback one.
- Neither: a password is generated once into var/flower-auth (mode 0600) and used.
Flower's other FLOWER_* variables (FLOWER_PORT, FLOWER_ADDRESS, ...) pass through.

Flower asks the workers about themselves once as it starts and logs a warning for each
question nobody answered; started beside the workers by `make run`, it would log four
before any worker is up. So it starts once a worker is live (its presence record,
tasks/state/liveness.py), or after WORKER_WAIT seconds without one.

This module is also the Celery app Flower runs (`celery -A scripts.run_flower flower`).
Its `app` is the service's app, built from the environment on first access (as
`tasks.app` is). Flower's broker view reads the queues through the project's connection
factory (tasks/queue/flower_view.py), so it works behind Sentinel and follows a
failover. The `celery` command keeps the repository root on the import path only while
it imports this module: what the app needs is imported at the top.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import redis

from tasks.queue.app import get_app
from tasks.queue.flower_view import install
from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect
from tasks.state.liveness import WorkerPresence

LOOPBACK = ("127.0.0.1", "localhost", "::1")
WORKER_WAIT = 15.0  # seconds Flower waits for a live worker before it starts anyway


def wait_for_a_worker(settings: Settings, seconds: float = WORKER_WAIT) -> bool:
    """Whether a live worker showed up within `seconds` (Redis may still be starting)."""
    client = connect(settings.redis_target, patient=False)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                if WorkerPresence(client).live_queues():
                    return True
            except redis.ConnectionError:
                pass  # `make run` starts Redis beside this process
            time.sleep(0.5)
        return False
    finally:
        client.close()


def main() -> int:
    env = dict(os.environ)
    try:
        settings = Settings.from_env(env)
    except SettingsError as exc:
        print(f"flower: refused to start: {exc}", file=sys.stderr, flush=True)
        return 2
    address = env.setdefault("FLOWER_ADDRESS", "127.0.0.1")
    env.setdefault("FLOWER_PORT", "5555")
    env.setdefault("FLOWER_PERSISTENT", "True")
    env.setdefault("FLOWER_DB", "var/flower.db")
    if not env.get("FLOWER_BASIC_AUTH"):
        if env.get("OCR_FLOWER_OPEN") == "1":
            if address not in LOOPBACK:
                print(f"flower: OCR_FLOWER_OPEN=1 is only allowed on loopback, not {address}",
                      flush=True)
                return 2
            print("flower: running WITHOUT authentication on loopback (OCR_FLOWER_OPEN=1)",
                  flush=True)
        else:
            env["FLOWER_BASIC_AUTH"] = generated_credentials(Path("var/flower-auth"))
            print("flower: basic auth user 'ocr', password in var/flower-auth "
                  "(set FLOWER_BASIC_AUTH=user:password to choose)", flush=True)
    Path(env["FLOWER_DB"]).parent.mkdir(parents=True, exist_ok=True)
    if not wait_for_a_worker(settings):
        print(f"flower: no live worker after {WORKER_WAIT:g} s; starting anyway (its "
              "'Inspect method ... failed' warnings mean no worker answered yet)", flush=True)
    celery = shutil.which("celery") or "celery"
    # The service's app, with Flower's queue view on the project's Redis connection.
    os.execve(celery, [celery, "-A", "scripts.run_flower", "flower"], env)
    return 1  # not reached: execve replaces this process


def __getattr__(name: str) -> Any:
    """`app` (and `celery`): the app Flower runs, with its queue view installed."""
    if name in ("app", "celery"):
        app = get_app()
        install(app.ocr_settings, dict(app.conf.broker_transport_options or {}))
        return app
    raise AttributeError(f"module 'scripts.run_flower' has no attribute {name!r}")


def generated_credentials(path: Path) -> str:
    """`ocr:<password>`, created once with mode 0600."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"ocr:{secrets.token_urlsafe(18)}\n")
    return path.read_text().strip()


if __name__ == "__main__":
    sys.exit(main())
