"""What a page costs the shared Redis, and the queue's ceiling with a null engine.

One worker (the Procfile's `worker:` line, 2 children, results cache off) with the
fake engine (devkit/fake_engines.py: a null engine, named as such; this measures the
queue, not OCR), on a redis-server of its own. Commands are `INFO commandstats`
(commands run inside scripts included), with the idle worker's rate over the same
time taken off:

- an idle worker, commands/s (over `IDLE_SECONDS`);
- a 6-page scanned PDF (`--mode ocr`: every page a page task), per page;
- 20 one-page images in one `submit.py` call that waits, per job;
- a 117-page born-digital PDF (its text layer), per page.

Each case is one `submit.py` call that waits (the client's own commands counted), and
`SETTLE_SECONDS` after it for the counts a process holds up to a second
(tasks/state/metrics.py `FLUSH_EVERY`) to go in and be counted with their case, run
`ROUNDS` times after a warm-up (the children's connections made); the median is
shown. A round is a window of about 2 s, and the fleet's periodic work (the holders'
sweep, the children's gauges, heartbeats, the health check of a connection idle since
the idle measurement) lands in some windows and not others: the idle rate takes its
average off, and five rounds keep a window it landed in from being the median.

The ceiling: pages/s of `CEILING_JOBS` one-page jobs through the whole service
(OcrClient enqueue and wait) against the same number of bare Celery no-op tasks
(bench/_noop_app.py, 2 children, results stored and waited for) on the same Redis in
the same run, in `CEILING_ROUNDS` interleaved rounds with both workers up (each idle
while the other is measured); the ratio is the median of the rounds' ratios, so that a
drift in the machine's load between the two halves does not read as a ratio. The
service's children recycle after `OCR_MAX_TASKS_PER_CHILD` tasks as they do in
production, so the rounds include their recycles. Each round also gives the CPU a job
of each side's processes (psutil): the client (this process), the worker parent, its
pool children (those reaped in the round included) and the redis-server, so that a
run says where the two sides differ.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis
from PIL import Image

from bench.common import (
    BenchError,
    Context,
    Ratio,
    Report,
    Table,
    median,
    worker_processes,
)
from devkit.corpus import CORPUS
from devkit.harness import (
    FAKE_PLUGINS,
    FAST_PAGES,
    ROOT,
    ProcfileProcess,
    RedisServer,
    Worker,
    make_client,
    stop_group,
)

IDLE_SECONDS = 10.0
ROUNDS = 5
# Seconds a case's count goes on after its call: its held metrics written (FLUSH_EVERY).
SETTLE_SECONDS = 1.5
# The ceiling's rounds: more and longer than the counts', since a round's rate on a
# shared 2-core machine moves by a third from one second to the next; a round of 400
# jobs holds about one recycle of each child, as production's 200 tasks a child do.
CEILING_ROUNDS = 5
CEILING_JOBS = 400
GOALS = {"idle": 3.0, "scan6": 40.0, "img20": 60.0, "dig117": 2.0}
GOAL_CEILING = 0.6
CASES = (("scan6", "a 6-page scanned PDF, per page", 6),
         ("img20", "20 one-page images, one submit.py call that waits, per job", 20),
         ("dig117", "a 117-page born-digital PDF, per page", 117))


def png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 48), 150 + n % 100).save(out, "PNG")
    return out.getvalue()


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands by name since the last CONFIG RESETSTAT."""
    return {name.removeprefix("cmdstat_"): int(stat["calls"])
            for name, stat in client.info("commandstats").items()}


def case_files(name: str, folder: Path) -> list[str]:
    if name == "scan6":
        return ["--mode", "ocr", str(CORPUS / "scan_vicksburg_ocrlayer_6p.pdf")]
    if name == "dig117":
        return [str(CORPUS / "dig_geotopo_117p.pdf")]
    for n in range(20):
        (folder / f"p{n}.png").write_bytes(png(n))
    return [str(folder / f"p{n}.png") for n in range(20)]


def count_case(store: redis.Redis, url: str, files: list[str], units: int,
               idle: float) -> dict[str, Any]:
    """One `submit.py` call that waits: its commands per unit, idle rate taken off."""
    store.config_resetstat()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "submit.py", "--redis-url", url, "--json",
                           "--timeout", "600", *files], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise BenchError(f"submit.py failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout)[-1000:]}")
    time.sleep(SETTLE_SECONDS)
    by_command = calls(store)
    counted = time.monotonic() - started
    total = sum(by_command.values())
    return {"per_unit": (total - idle * counted) / units, "seconds": seconds, "total": total,
            "top": dict(sorted(by_command.items(), key=lambda kv: -kv[1])[:20])}


def service_rate(url: str, jobs: int) -> float:
    """Pages/s of `jobs` one-page jobs through the whole service (enqueue to result)."""
    client = make_client(url)
    images = [png(n) for n in range(jobs)]
    started = time.perf_counter()
    ids = [client.submit(image, filename=f"{n}.png") for n, image in enumerate(images)]
    results = client.wait(ids, timeout=600)
    seconds = time.perf_counter() - started
    client.close()
    if {r["status"] for r in results.values()} != {"SUCCESS"}:
        raise BenchError("a ceiling job did not succeed")
    return jobs / seconds


CPU_PARTS = ("client", "worker parent", "pool children", "redis-server")


def cpu_seconds(worker: ProcfileProcess, server: RedisServer) -> dict[str, float]:
    """CPU seconds so far of this process, a worker parent, its children, a redis-server.

    A worker parent's children are its live ones and those it has reaped (their time is
    added to the parent's `children_*` as each is reaped).
    """
    main, *live = worker_processes(worker)
    parent = main.cpu_times()
    children = parent.children_user + parent.children_system
    for child in live:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            children += times.user + times.system
    assert server.proc is not None
    me, redis_cpu = psutil.Process().cpu_times(), psutil.Process(server.proc.pid).cpu_times()
    return dict(zip(CPU_PARTS, (me.user + me.system, parent.user + parent.system, children,
                                redis_cpu.user + redis_cpu.system), strict=True))


def measured(rate: Callable[[], float], worker: ProcfileProcess, server: RedisServer,
             jobs: int) -> tuple[float, dict[str, float]]:
    """`rate()` (pages/s), and the ms of CPU a job each of `CPU_PARTS` spent meanwhile."""
    before = cpu_seconds(worker, server)
    pages_per_second = rate()
    after = cpu_seconds(worker, server)
    return pages_per_second, {part: (after[part] - before[part]) * 1000 / jobs
                              for part in CPU_PARTS}


def start_bare_celery(ctx: Context, url: str) -> ProcfileProcess:
    """A bare Celery worker (bench/_noop_app.py, 2 children) on `url`, ready."""
    env = {"NOOP_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    worker = ProcfileProcess("worker", ctx.workdir / "noop.log", env)
    worker.proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "bench._noop_app", "worker", "-c", "2",
         "--without-mingle", "--without-gossip", "--loglevel=INFO"], cwd=ROOT,
        env={**worker.env, **env}, stdout=open(worker.log_path, "ab"),  # noqa: SIM115
        stderr=subprocess.STDOUT, start_new_session=True)
    worker.wait_until(lambda: " ready." in worker.log(), 120, "ready")
    from bench import _noop_app
    _noop_app.app.conf.update(broker_url=url, result_backend=url)
    return worker


def bare_celery_rate(jobs: int) -> float:
    """Pages/s of `jobs` no-op tasks on the bare Celery worker, results waited for."""
    from bench import _noop_app
    data = png(0).hex()
    started = time.perf_counter()
    sent = [_noop_app.page.delay(data) for _ in range(jobs)]
    for result in sent:
        result.get(timeout=600)
    return jobs / (time.perf_counter() - started)


def run(ctx: Context) -> Report:
    rounds = ctx.size(ROUNDS, 1)
    server = RedisServer(ctx.workdir / "redis")
    (ctx.workdir / "redis").mkdir(parents=True, exist_ok=True)
    server.start()
    url = server.url(3)
    store = redis.Redis.from_url(url)
    worker = Worker(ctx.workdir / "worker.log", {
        "REDIS_URL": url, "OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
        "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "2", "OCR_SKIP_BLANK_PAGES": "0",
        **FAST_PAGES})
    data: dict[str, Any] = {}
    try:
        worker.start(timeout=180)
        for name, _, _ in CASES[:2]:  # warm: children's connections made, TTLs set
            count_case(store, url, case_files(name, ctx.workdir), 1, 0.0)
        time.sleep(3)  # the start-up's own writes are over
        store.config_resetstat()
        started = time.monotonic()
        time.sleep(ctx.size(int(IDLE_SECONDS), 3))
        idle = sum(calls(store).values()) / (time.monotonic() - started)
        data["idle_per_s"] = idle
        for name, _, units in CASES:
            files = case_files(name, ctx.workdir)
            runs = [count_case(store, url, files, units, idle) for _ in range(rounds)]
            data[name] = runs
        jobs = ctx.size(CEILING_JOBS, 20)
        bare = start_bare_celery(ctx, server.url(5))
        try:
            bare_celery_rate(jobs // 10)  # warm: its children's connections made
            data["ceiling_rounds"] = []
            for _ in range(ctx.size(CEILING_ROUNDS, 1)):
                service, service_cpu = measured(lambda: service_rate(url, jobs), worker,
                                                server, jobs)
                celery, celery_cpu = measured(lambda: bare_celery_rate(jobs), bare, server,
                                              jobs)
                data["ceiling_rounds"].append({
                    "service": service, "celery": celery,
                    "service_cpu_ms": service_cpu, "celery_cpu_ms": celery_cpu})
        finally:
            stop_group(bare.proc, grace=10)
    finally:
        worker.stop()
        server.stop()
    return report(data, rounds)


def report(data: dict[str, Any], rounds: int) -> Report:
    table = Table(f"Redis commands (INFO commandstats, scripts' own included, idle rate "
                  f"taken off; median of {rounds}), one worker with 2 children, null "
                  "(fake) engine, results cache off",
                  ["case", "commands", "goal", "seconds"])
    table.rows.append(["an idle worker, commands/s", data["idle_per_s"], GOALS["idle"], ""])
    ratios = [Ratio("idle worker commands/s", data["idle_per_s"], f"<= {GOALS['idle']}",
                    data["idle_per_s"] <= GOALS["idle"])]
    for name, title, _ in CASES:
        value = median([r["per_unit"] for r in data[name]])
        table.rows.append([title, value, GOALS[name],
                           median([r["seconds"] for r in data[name]])])
        ratios.append(Ratio(f"commands: {title}", value, f"<= {GOALS[name]}",
                            value <= GOALS[name]))
    per_round = [r["service"] / r["celery"] for r in data["ceiling_rounds"]]
    ceiling = median(per_round)
    speed = Table("Null-engine ceiling: one-page jobs through the whole service against "
                  "bare Celery no-op tasks, same Redis, same run, interleaved rounds",
                  ["round", "service pages/s (OcrClient enqueue and wait)",
                   "bare Celery no-op tasks, pages/s", "ratio"])
    speed.rows += [[n + 1, r["service"], r["celery"], ratio]
                   for n, (r, ratio) in enumerate(zip(data["ceiling_rounds"], per_round,
                                                            strict=True))]
    ratios.append(Ratio("service / bare Celery pages/s (null engine)", ceiling,
                        f">= {GOAL_CEILING}", ceiling >= GOAL_CEILING))
    return Report("queue_cost", tables=[table, speed, cpu_table(data["ceiling_rounds"])],
                  ratios=ratios, data=data, notes=[f"cpus: {os.cpu_count()}"])


def cpu_table(rounds: list[dict[str, Any]]) -> Table:
    """The ceiling rounds' CPU a job by process, each side's median over the rounds."""
    table = Table("Null-engine ceiling: CPU a job by process (psutil; ms, median of the "
                  "rounds)", ["process", "service", "bare Celery", "service - bare"])
    for part in (*CPU_PARTS, "all"):
        sides = [median([sum(r[side].values()) if part == "all" else r[side][part]
                         for r in rounds]) for side in ("service_cpu_ms", "celery_cpu_ms")]
        table.rows.append([part, *sides, sides[0] - sides[1]])
    return table
