"""An idle fleet's cost to Redis: commands/s of N idle workers on one redis-server.

`python -m bench --only idle_fleet` starts one redis-server and N workers from the
Procfile's `worker` line (50; 4 with --quick), each with the solo pool and the fake
engine (devkit/fake_engines.py: a null engine, for queue mechanics only), waits until
every one is ready and a settling while has passed, then reads `INFO commandstats`
twice, a window apart, and divides: every command counts, those run inside Lua
scripts included. Nothing is sent: the figure is what workers cost Redis doing
nothing (their fetches and waits on wake-ups, event heartbeats, presence records,
the unacked restore check, telemetry). Goal: at most 150 commands/s for 50 workers
(3 per worker).
"""

from __future__ import annotations

import functools
import subprocess
import time
from typing import Any

import redis

from bench.common import Context, Ratio, Report, Table
from devkit.harness import ROOT, RedisServer, Worker, fake_env, procfile_command, stop_all

GOAL_PER_WORKER = 3.0


class SoloWorker(Worker):
    """The Procfile's `worker` line with the solo pool (one process per worker)."""

    def spawn(self) -> subprocess.Popen[bytes]:
        self.spawned_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                ["sh", "-c", f"exec {procfile_command(self.process)} --pool=solo"],
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        return self.proc


def ready(worker: Worker) -> bool:
    return "ready." in worker.log()


def commandstats(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(v["calls"])
            for name, v in client.info("commandstats").items()}


def idle_rate(client: redis.Redis, window: float) -> tuple[float, dict[str, int]]:
    """Commands/s over `window` seconds (this reader's own INFO taken off) and by command."""
    before = commandstats(client)
    time.sleep(window)
    after = commandstats(client)
    by_command = {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}
    by_command["info"] = by_command.get("info", 1) - 1
    return sum(by_command.values()) / window, by_command


def run(ctx: Context) -> Report:
    count = 4 if ctx.quick else 50
    window = 10.0 if ctx.quick else 30.0
    server = RedisServer(ctx.workdir)
    server.start()
    workers: list[Worker] = []
    env = {"REDIS_URL": server.url(), **fake_env()}
    try:
        workers.extend(SoloWorker(ctx.workdir / f"worker-{i}.log", env)
                       for i in range(count))
        for worker in workers:
            worker.spawn()
        for worker in workers:
            worker.wait_until(functools.partial(ready, worker), 600, "ready")
        time.sleep(15)  # past start-up writes (first heartbeats, presence, bindings)
        client = redis.Redis(port=server.port)
        rate, by_command = idle_rate(client, window)
    finally:
        stop_all(workers)
        server.stop()
    per_worker = rate / count
    top = sorted(by_command.items(), key=lambda kv: -kv[1])[:12]
    report = Report("idle_fleet")
    report.tables.append(Table(
        f"{count} idle workers (solo pool, the fake null engine), commands/s over "
        f"{window:.0f} s", ("workers", "commands/s", "per worker", "goal per worker"),
        [(count, round(rate, 1), round(per_worker, 2), GOAL_PER_WORKER)]))
    report.tables.append(Table("commands in the window, by command", ("command", "calls"),
                               [(k, n) for k, n in top]))
    report.ratios.append(Ratio("idle fleet commands/s per worker", round(per_worker, 2),
                               f"<= {GOAL_PER_WORKER}", per_worker <= GOAL_PER_WORKER))
    data: dict[str, Any] = {"workers": count, "window_s": window,
                            "commands_per_s": rate, "by_command": by_command}
    report.data.update(data)
    return report
