"""How far one Redis goes: a simulated fleet's commands/s and Redis CPU, and where it saturates.

`python -m bench --only fleet_scale` on one redis-server of its own:

1. **Redis's own ceiling on this machine**: `redis-benchmark` (50 connections, no
   pipelining, plain commands) while `INFO cpu` and `INFO commandstats` are read
   before and after: commands per second of Redis CPU (used_cpu_sys + used_cpu_user),
   which is the commands/s of one Redis core at 100 %.
2. **A page's cost in Redis CPU**: one real worker (the Procfile's `worker:` line, 2
   children, the fake null engine of devkit/fake_engines.py, results cache off) and
   `submit.py` calls that wait, as bench/queue_cost.py runs them: a 6-page scanned PDF
   and 20 one-page images; commands and Redis CPU seconds per page, the idle worker's
   rate taken off. One core divided by that is the pages/s at which Redis saturates.
3. **A simulated fleet** of 50, 200 and 1,000 workers (bench/_fleet_sim.py: threads
   that each do what a solo-pool worker parent does against Redis through the same
   code, with a no-op task; 250 a process). Busy: `BACKLOG` messages published
   through the service's sending app with the fleet down (the publish cost measured on
   its own), then the fleet, connected and beating, let go on them for `BUSY_WINDOW` s
   or until a tenth is left; idle: after the backlog is gone, over `IDLE_WINDOW` s.
   Commands/s, Redis CPU and, busy, messages/s and the transport's commands and CPU a
   message (fetch and acknowledgement; the fleet's idle rate taken off).
4. **The simulation checked**: `CALIBRATION` real workers (the Procfile's line, solo
   pool, fake engine, bench/idle_fleet.py's) idle on the same Redis, per worker.

Every figure of Redis counts the commands run inside scripts. The machine's other
users share the 2 cores: the JSON records the load.
"""

from __future__ import annotations

import functools
import math
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis

from bench.common import BenchError, Context, Ratio, Report, Table, median
from bench.idle_fleet import SoloWorker, ready
from bench.queue_cost import case_files, count_case
from devkit.harness import (
    FAKE_PLUGINS,
    FAST_PAGES,
    ROOT,
    RedisServer,
    Worker,
    eventually,
    fake_env,
    stop_all,
    stop_groups,
)
from tasks.queue.app import sending_app
from tasks.settings import Settings

SIZES = (50, 200, 1000)
CALIBRATION = 4
PER_PROCESS = 250
IDLE_WINDOW = 30.0
BUSY_WINDOW = 10.0
SETTLE = 15.0
BACKLOG = 2000
CLIENTS = 4  # the backlog's messages name 4 clients: the fetch serves lanes


def stats(client: redis.Redis) -> tuple[dict[str, int], float]:
    """Commands by name (since start) and Redis's CPU seconds (sys + user)."""
    calls = {name.removeprefix("cmdstat_"): int(v["calls"])
             for name, v in client.info("commandstats").items()}
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def delta(before: tuple[dict[str, int], float],
          after: tuple[dict[str, int], float]) -> tuple[dict[str, int], float]:
    by = {k: n - before[0].get(k, 0) for k, n in after[0].items() if n - before[0].get(k, 0)}
    by["info"] = by.get("info", 2) - 2  # this reader's own two INFO
    return {k: n for k, n in by.items() if n}, after[1] - before[1]


def redis_ceiling(port: int, quick: bool) -> dict[str, Any]:
    """Commands per Redis CPU second under redis-benchmark's plain commands."""
    client = redis.Redis(port=port)
    requests = 20000 if quick else 200000
    before, started = stats(client), time.monotonic()
    done = subprocess.run(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", "50", "-n",
         str(requests), "-q", "--csv", "-t", "ping,set,get,incr,lpush,rpop,hset,zadd"],
        capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"redis-benchmark failed: {done.stderr[-500:]}")
    by, cpu = delta(before, stats(client))
    commands = sum(by.values())
    client.flushall()
    return {"commands": commands, "cpu_s": cpu, "seconds": seconds,
            "commands_per_cpu_s": commands / cpu, "cpu_share": cpu / seconds,
            "benchmark_csv": done.stdout}


def page_cost(ctx: Context, server: RedisServer, rounds: int) -> dict[str, Any]:
    """Commands and Redis CPU a page: one real worker, null engine (bench/queue_cost.py)."""
    url = server.url(3)
    store = redis.Redis.from_url(url)
    worker = Worker(ctx.workdir / "worker.log", {
        "REDIS_URL": url, "OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
        "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "2", "OCR_SKIP_BLANK_PAGES": "0",
        **FAST_PAGES})
    out: dict[str, Any] = {}
    try:
        worker.start(timeout=180)
        count_case(store, url, case_files("scan6", ctx.workdir), 1, 0.0)  # warm
        time.sleep(3)
        before, started = stats(store), time.monotonic()
        time.sleep(ctx.size(10, 3))
        by, cpu = delta(before, stats(store))
        idle_s = time.monotonic() - started
        out["idle"] = {"commands_per_s": sum(by.values()) / idle_s, "cpu_share": cpu / idle_s}
        for name, units in (("scan6", 6), ("img20", 20)):
            files = case_files(name, ctx.workdir)
            runs = []
            for _ in range(rounds):
                cpu0 = stats(store)[1]
                run = count_case(store, url, files, units, out["idle"]["commands_per_s"])
                cpu_s = stats(store)[1] - cpu0 - out["idle"]["cpu_share"] * run["seconds"]
                runs.append({**run, "cpu_s_per_unit": cpu_s / units})
            out[name] = {"commands": median([r["per_unit"] for r in runs]),
                         "cpu_s": median([r["cpu_s_per_unit"] for r in runs]), "runs": runs}
    finally:
        worker.stop()
        store.flushdb()
    return out


class Fleet:
    """`count` simulated workers in processes of `PER_PROCESS` (bench/_fleet_sim.py)."""

    def __init__(self, workdir: Path, env: dict[str, str], count: int) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        processes = math.ceil(count / PER_PROCESS)
        for n in range(processes):
            size = count // processes + (1 if n < count % processes else 0)
            log = workdir / f"fleet-{count}-{n}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "bench._fleet_sim", "--workers", str(size),
                     "--node-prefix", f"sim{count}x{n}", "--hold"], cwd=ROOT, env=env, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append((proc, log))

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            for proc, log in self.procs:
                text = log.read_text(errors="replace")
                if proc.poll() is not None or "failed " in text:
                    raise BenchError(f"a fleet process failed: {text[-1500:]}")
            return all("ready" in log.read_text(errors="replace") for _, log in self.procs)
        eventually(ready, timeout, "every simulated worker to consume", interval=0.5)

    def go(self) -> None:
        """Every simulated worker starts consuming tasks."""
        for proc, _ in self.procs:
            proc.send_signal(signal.SIGUSR1)

    def stop(self) -> int:
        """Stop every process (warm: offline events, presence withdrawn); messages acked."""
        stop_groups([(proc, 60.0) for proc, _ in self.procs])
        acked = 0
        for _, log in self.procs:
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("acked "):
                    acked += int(line.split()[1])
        return acked


def backlog(url: str) -> int:
    """Messages waiting on `ocr`, lanes included (the transport's own count)."""
    app = sending_app(Settings.from_env({"REDIS_URL": url}))
    with app.connection_for_write() as conn:
        return int(conn.default_channel.queue_declare(queue="ocr")[1])


def publish(url: str, messages: int) -> float:
    """`messages` null tasks on `ocr` through the service's sending app; seconds taken."""
    app = sending_app(Settings.from_env({"REDIS_URL": url}))
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for n in range(messages):
            app.send_task("bench.null", args=[n], queue="ocr", producer=producer,
                          headers={"ocr_client": f"client-{n % CLIENTS}"})
    return time.monotonic() - started


def measure_fleet(ctx: Context, server: RedisServer, count: int) -> dict[str, Any]:
    url = server.url(0)
    client = redis.Redis(port=server.port)
    client.flushall()
    messages = ctx.size(BACKLOG, 300)
    before = stats(client)
    seconds = publish(url, messages)
    by, cpu = delta(before, stats(client))
    out: dict[str, Any] = {"workers": count, "published": messages, "publish": {
        "commands_per_message": sum(by.values()) / messages,
        "cpu_us_per_message": cpu / messages * 1e6, "seconds": seconds}}
    env = {"REDIS_URL": url, **fake_env(), "PYTHONPATH": str(ROOT)}
    fleet = Fleet(ctx.workdir, env, count)
    try:
        started = time.monotonic()
        fleet.wait_ready(600)
        out["start_s"] = time.monotonic() - started
        out["busy"] = busy_window(client, url, fleet, ctx.size(int(BUSY_WINDOW), 3))
        eventually(lambda: backlog(url) == 0, 600, "the backlog to drain",
                   interval=1.0)
        time.sleep(ctx.size(int(SETTLE), 5))
        before, t0 = stats(client), time.monotonic()
        time.sleep(ctx.size(int(IDLE_WINDOW), 5))
        by, cpu = delta(before, stats(client))
        window = time.monotonic() - t0
        out["idle"] = {"window_s": window, "commands_per_s": sum(by.values()) / window,
                       "per_worker": sum(by.values()) / window / count,
                       "cpu_share": cpu / window, "by_command": by}
    finally:
        out["acked"] = fleet.stop()
    busy, idle = out["busy"], out["idle"]
    commands = busy["commands"] - idle["commands_per_s"] * busy["window_s"]
    cpu = busy["cpu_s"] - idle["cpu_share"] * busy["window_s"]
    busy["commands_per_message"] = commands / max(busy["taken"], 1)
    busy["cpu_us_per_message"] = cpu / max(busy["taken"], 1) * 1e6
    return out


def busy_window(client: redis.Redis, url: str, fleet: Fleet, window: float) -> dict[str, Any]:
    """The held fleet let go on the backlog: `window` s, or until a tenth of it is left."""
    left0, before, t0 = backlog(url), stats(client), time.monotonic()
    fleet.go()
    left = left0
    while time.monotonic() - t0 < window and left > left0 // 10:
        time.sleep(0.5)
        left = backlog(url)
    after, seconds = stats(client), time.monotonic() - t0
    by, cpu = delta(before, after)
    taken = left0 - left
    return {"window_s": seconds, "taken": taken, "left_at_end": left,
            "messages_per_s": taken / seconds, "commands": sum(by.values()), "cpu_s": cpu,
            "commands_per_s": sum(by.values()) / seconds, "cpu_share": cpu / seconds,
            "by_command": by}


def calibrate(ctx: Context, server: RedisServer, count: int) -> dict[str, Any]:
    """`count` real solo-pool workers idle: commands/s a worker, by command."""
    client = redis.Redis(port=server.port)
    client.flushall()
    env = {"REDIS_URL": server.url(0), **fake_env()}
    workers = [SoloWorker(ctx.workdir / f"real-{n}.log", env) for n in range(count)]
    try:
        for worker in workers:
            worker.spawn()
        for worker in workers:
            worker.wait_until(functools.partial(ready, worker), 600, "ready")
        time.sleep(ctx.size(int(SETTLE), 5))
        before, t0 = stats(client), time.monotonic()
        time.sleep(ctx.size(int(IDLE_WINDOW), 10))
        by, cpu = delta(before, stats(client))
        window = time.monotonic() - t0
    finally:
        stop_all(workers)
    return {"workers": count, "window_s": window, "per_worker": sum(by.values()) / window
            / count, "cpu_share": cpu / window, "by_command": by}


def run(ctx: Context) -> Report:
    server = RedisServer(ctx.workdir)
    server.start()
    data: dict[str, Any] = {}
    try:
        data["ceiling"] = redis_ceiling(server.port, ctx.quick)
        data["page"] = page_cost(ctx, server, ctx.size(3, 1))
        data["real_idle"] = calibrate(ctx, server, ctx.size(CALIBRATION, 2))
        sizes = (4, 8) if ctx.quick else SIZES
        data["fleet"] = [measure_fleet(ctx, server, n) for n in sizes]
    finally:
        server.stop()
    return report(data)


def report(data: dict[str, Any]) -> Report:
    ceiling, page = data["ceiling"], data["page"]
    per_cpu_s = ceiling["commands_per_cpu_s"]
    out = Report("fleet_scale", data=data)
    out.tables.append(Table(
        "Redis alone: redis-benchmark, 50 connections, no pipelining, plain commands",
        ("commands", "Redis CPU s", "wall s", "Redis CPU share", "commands per CPU s"),
        [(ceiling["commands"], ceiling["cpu_s"], ceiling["seconds"], ceiling["cpu_share"],
          per_cpu_s)]))
    rows: list[Sequence[Any]] = []
    for name, title in (("scan6", "a 6-page scanned PDF, per page"),
                        ("img20", "20 one-page images, per job")):
        cpu_s = page[name]["cpu_s"]
        rows.append((title, page[name]["commands"], cpu_s * 1e6,
                     page[name]["commands"] / cpu_s if cpu_s > 0 else float("nan"),
                     1 / cpu_s if cpu_s > 0 else float("nan"),
                     per_cpu_s / page[name]["commands"]))
    out.tables.append(Table(
        "A page's cost to Redis: one real worker (2 children, null engine), submit.py "
        "calls that wait, idle rate taken off (median)",
        ("case", "commands", "Redis CPU us", "commands per CPU s",
         "per s at one core (measured CPU)", "per s at one core (commands x ceiling)"),
        rows))
    fleet = Table("A simulated fleet (bench/_fleet_sim.py: solo-pool worker parents' "
                  "Redis traffic, null task)",
                  ("workers", "idle commands/s", "per worker", "idle Redis CPU %",
                   "busy messages/s", "busy commands/s", "busy Redis CPU %",
                   "commands a message (fetch+ack)", "publish commands a message"))
    for f in data["fleet"]:
        fleet.rows.append((f["workers"], f["idle"]["commands_per_s"], f["idle"]["per_worker"],
                           100 * f["idle"]["cpu_share"], f["busy"]["messages_per_s"],
                           f["busy"]["commands_per_s"], 100 * f["busy"]["cpu_share"],
                           f["busy"]["commands_per_message"],
                           f["publish"]["commands_per_message"]))
    out.tables.append(fleet)
    real = data["real_idle"]
    sim = {k: n / f["idle"]["window_s"] / f["workers"]
           for f in data["fleet"][:1] for k, n in f["idle"]["by_command"].items()}
    out.tables.append(Table(
        f"The simulation checked: commands/s a worker, idle, {real['workers']} real "
        f"solo-pool workers against {data['fleet'][0]['workers']} simulated",
        ("command", "real", "simulated"),
        [(k, real["by_command"].get(k, 0) / real["window_s"] / real["workers"], sim.get(k, 0))
         for k in sorted(set(real["by_command"]) | set(sim))]
        + [("all", real["per_worker"], data["fleet"][0]["idle"]["per_worker"])]))
    scan_cpu = page["scan6"]["cpu_s"]
    if scan_cpu > 0:
        out.ratios.append(Ratio("scanned pages/s at one Redis core (measured CPU a page)",
                                1 / scan_cpu))
    for f in data["fleet"]:
        out.ratios.append(Ratio(f"idle commands/s per simulated worker ({f['workers']})",
                                f["idle"]["per_worker"], "<= 3.0",
                                f["idle"]["per_worker"] <= 3.0))
    return out
