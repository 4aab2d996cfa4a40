#!/usr/bin/env python3
"""Procfile `flower` process: Flower with basic auth unless explicitly opened on loopback.

- FLOWER_BASIC_AUTH=user:password (Flower's own variable): used as it is.
- OCR_FLOWER_OPEN=1: no auth, and only when the address is a loopback one.
- Neither: a password is generated once into var/flower-auth (mode 0600, the password
  alone, as a browser's prompt takes it) and used with user `ocr`.
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

SIGTERM stops Flower at once, its state saved (`PromptFlower`). Flower's own handler
raises SystemExit, and the interpreter then joins its executor's threads before the
exit handler saves the state: each inspect broadcast in flight runs to its timeout
(FLOWER_INSPECT_TIMEOUT), and on a loaded machine that took past `make run`'s 10 s
grace, whose SIGKILL loses the state.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import flower.app
import flower.command
import redis

from tasks.queue.app import get_app
from tasks.queue.flower_view import install
from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect
from tasks.state.liveness import WorkerPresence

LOOPBACK = ("127.0.0.1", "localhost", "::1")
USER = "ocr"  # the user of the generated password
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
            print(f"flower: basic auth user '{USER}', password in var/flower-auth "
                  "(set FLOWER_BASIC_AUTH=user:password to choose)", flush=True)
    Path(env["FLOWER_DB"]).parent.mkdir(parents=True, exist_ok=True)
    if not wait_for_a_worker(settings):
        print(f"flower: no live worker after {WORKER_WAIT:g} s; starting anyway (its "
              "'Inspect method ... failed' warnings mean no worker answered yet)", flush=True)
    celery = shutil.which("celery") or "celery"
    # The service's app, with Flower's queue view on the project's Redis connection.
    os.execve(celery, [celery, "-A", "scripts.run_flower", "flower"], env)
    return 1  # not reached: execve replaces this process


class PromptFlower(flower.app.Flower):
    """Flower whose SIGTERM saves its state and exits, not waiting on inspect threads."""

    def start(self) -> None:
        signal.signal(signal.SIGTERM, self._terminate)  # in place of Flower's handler
        super().start()

    def _terminate(self, signum: int, frame: FrameType | None) -> None:
        self.stop()  # Flower's own stop: its state saved (FLOWER_PERSISTENT)
        print("flower: stopped on SIGTERM", flush=True)
        logging.shutdown()
        os._exit(0)


def __getattr__(name: str) -> Any:
    """`app` (and `celery`): the app Flower runs, with its queue view installed."""
    if name in ("app", "celery"):
        app = get_app()
        install(app.ocr_settings, dict(app.conf.broker_transport_options or {}))
        flower.command.Flower = PromptFlower  # the class Flower's command builds
        return app
    raise AttributeError(f"module 'scripts.run_flower' has no attribute {name!r}")


def generated_credentials(path: Path) -> str:
    """`ocr:<password>` for FLOWER_BASIC_AUTH; `path` holds the password alone.

    The file is created once, mode 0600. One that holds `ocr:<password>` (as it was
    once written) is written again with the password alone.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(f"{secrets.token_urlsafe(18)}\n")
    password = path.read_text().strip()
    if password.startswith(f"{USER}:"):
        password = password.removeprefix(f"{USER}:")
        path.write_text(f"{password}\n")
    return f"{USER}:{password}"


if __name__ == "__main__":
    sys.exit(main())
