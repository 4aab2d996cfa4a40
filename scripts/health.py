#!/usr/bin/env python3
"""Liveness and readiness of one Procfile role: `python -m scripts.health ROLE live|ready`.

Runs as a short process inside the container (or on the host) of the role it checks,
called by the image's probes (compose healthchecks, Kubernetes exec probes). Exit 0
when healthy; otherwise exit 1 with one line on stderr saying why.

- api: live, `/healthz` answers 200; ready, `/readyz` (the API's own readiness
  snapshot, tasks/api/_readiness.py) says Redis answers. Workers are not required:
  jobs wait in the queue until a worker (perhaps scaled from zero) takes them.
- worker, control: the worker's presence record (tasks/state/liveness.py), refreshed
  by the worker parent every 2 s, is live for its node name (`WORKER_NAME`, `cpu` by
  default, or `control`, `@` the host name, as the worker names itself (`node_name`);
  `--node` to name another). live: the record is there, or Redis does not answer (a
  restart would not bring Redis back; the worker reconnects itself); ready: the record
  is there. A worker has no record until its pool is up: give probes a start period.
- beat: a `celery ... beat` process runs here; ready adds that Redis answers.
- flower: Flower's `/healthcheck` answers (no auth); ready adds that Redis answers.
- metrics: live, `/metrics` answers at all; ready, it answers 200 (it reads Redis).

Ports and addresses are the roles' own variables (API_PORT, FLOWER_PORT,
METRICS_PORT); probes connect to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from tasks.settings import Settings, SettingsError
from tasks.state.connection import connect
from tasks.state.liveness import WorkerPresence

ROLES = ("api", "worker", "control", "beat", "flower", "metrics")
TIMEOUT = 5.0


class Unhealthy(Exception):
    """The one line a failed check prints."""


def http_get(port_variable: str, default: int, path: str) -> tuple[int, bytes]:
    """Status and body of GET http://127.0.0.1:PORT/path (any HTTP status is an answer)."""
    port = int(os.environ.get(port_variable) or default)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:  # noqa: S310 (loopback)
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unhealthy(f"no answer at {url}: {reason}") from exc


def redis_client() -> redis.Redis:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        raise Unhealthy(f"settings: {exc}") from exc
    return connect(settings.redis_target, patient=False)


def redis_answers() -> None:
    try:
        redis_client().ping()
    except redis.RedisError as exc:
        raise Unhealthy(f"redis unreachable: {type(exc).__name__}") from exc


def api(ready: bool) -> None:
    if not ready:
        status, _ = http_get("API_PORT", 8000, "/healthz")
        if status != 200:
            raise Unhealthy(f"/healthz answered {status}")
        return
    status, body = http_get("API_PORT", 8000, "/readyz")
    try:
        readiness = json.loads(body)
    except ValueError as exc:
        raise Unhealthy(f"/readyz answered {status} without JSON") from exc
    if not readiness.get("redis"):
        raise Unhealthy(f"/readyz: {readiness.get('message') or 'redis not seen'}")


def worker_node(role: str) -> str:
    """The node name the worker takes on this host (tasks/queue/presence.py:node_name)."""
    name = "control" if role == "control" else (os.environ.get("WORKER_NAME") or "cpu")
    return f"{name}@{socket.gethostname()}"


def worker(node: str, ready: bool) -> None:
    try:
        live = WorkerPresence(redis_client()).live_queues()
    except redis.RedisError as exc:
        if not ready:
            return  # nothing to judge the worker by; restarting it would not help
        raise Unhealthy(f"redis unreachable: {type(exc).__name__}") from exc
    if node not in live:
        raise Unhealthy(f"no live presence record for worker {node}")


def beat_process() -> None:
    """A `celery ... beat` process runs in this process namespace."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        words = [Path(a.decode(errors="replace")).name for a in argv if a]
        if "beat" in words and any(w.startswith("celery") for w in words):
            return
    raise Unhealthy("no celery beat process runs here")


def beat(ready: bool) -> None:
    beat_process()
    if ready:
        redis_answers()


def flower(ready: bool) -> None:
    status, _ = http_get("FLOWER_PORT", 5555, "/healthcheck")
    if status != 200:
        raise Unhealthy(f"flower /healthcheck answered {status}")
    if ready:
        redis_answers()


def metrics(ready: bool) -> None:
    status, _ = http_get("METRICS_PORT", 9808, "/metrics")
    if ready and status != 200:
        raise Unhealthy(f"/metrics answered {status}")


def check(role: str, ready: bool, node: str | None = None) -> None:
    """Raise `Unhealthy` when `role` is not live (or not ready)."""
    if role in ("worker", "control"):
        worker(node or worker_node(role), ready)
        return
    checks: dict[str, Callable[[bool], None]] = {
        "api": api, "beat": beat, "flower": flower, "metrics": metrics}
    checks[role](ready)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.health",
        description="Exit 0 when the role is live (or ready), else 1 with one line on stderr.")
    parser.add_argument("role", choices=ROLES)
    parser.add_argument("probe", choices=("live", "ready"))
    parser.add_argument("--node", help="worker node name (default: the Procfile's, "
                        "WORKER_NAME or cpu, or control, @ this host name)")
    args = parser.parse_args(argv)
    try:
        check(args.role, args.probe == "ready", args.node)
    except Unhealthy as exc:
        print(f"{args.role} not {args.probe}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
