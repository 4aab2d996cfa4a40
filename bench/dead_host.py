"""A dead worker host on Redis: seconds from its SIGKILL to every job it held ended elsewhere.

Worker A (HELD pool children) takes HELD jobs and holds them (the fake engine takes
10 min a page on A); worker B is idle on the same queue; A's parent and children are
SIGKILLed together (a host that dies, a preempted node). Measured: seconds from the
kill to the last of A's jobs stored SUCCESS, finished by B (which includes the jobs'
own run on B, `JOB_SECONDS`). Everything at its defaults: OCR_VISIBILITY_TIMEOUT 900 s
(the backstop only), OCR_WORKER_LIVENESS_SECONDS 30 s (a silent holder's messages are
put back by the sweep of dead holders, tasks/broker/holders.py, run by B every 10 s).
Goal: at most 45 s. Fake engine (devkit/fake_engines.py), named as such:
this measures the queue, not OCR. Runs in the benchmark process; the workers and
redis-server are its children.
"""

from __future__ import annotations

import io
import time

from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Table, median
from devkit.harness import FAKE_PLUGINS, RedisServer, Worker
from devkit.harness import make_client as make_test_client

JOB_SECONDS = 0.5  # on B
HELD = 4           # jobs A holds when it dies
GOAL_S = 45.0


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 48), shade).save(out, "PNG")
    return out.getvalue()


def _env(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
            "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": str(HELD),
            "FAKE_PAGE_SECONDS": str(JOB_SECONDS)}


def _one_kill(ctx: Context, redis_url: str, rep: int) -> dict[str, float]:
    env = _env(redis_url)
    doomed = Worker(ctx.workdir / f"{rep}-a.log", {**env, "FAKE_PAGE_SECONDS": "600"}).start()
    survivor: Worker | None = None
    client = make_test_client(redis_url)
    try:
        jobs = [client.submit(_png(120 + 10 * rep + i)) for i in range(HELD)]
        while any(client.status(job).state != "STARTED" for job in jobs):
            time.sleep(0.05)
        survivor = Worker(ctx.workdir / f"{rep}-b.log", env).start()
        killed = time.monotonic()
        doomed.kill()
        results = client.wait(jobs, timeout=300, poll=0.05)
        done = time.monotonic()
        if any(results[j].get("status") != "SUCCESS" for j in jobs):
            raise BenchError(f"run {rep}: not every job finished elsewhere: {results}")
        return {"kill_to_all_done_s": done - killed, "jobs": float(HELD)}
    finally:
        if survivor is not None:
            survivor.stop()
        doomed.stop()
        client.close()


def run(ctx: Context) -> Report:
    reps = ctx.size(3, 1)
    (ctx.workdir / "redis").mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(ctx.workdir / "redis")
    redis_server.start()
    try:
        runs = [_one_kill(ctx, redis_server.url(1 + i), i) for i in range(reps)]
    finally:
        redis_server.stop()
    values = [r["kill_to_all_done_s"] for r in runs]
    table = Table(f"Dead worker host on Redis (parent and {HELD} children SIGKILLed, each "
                  f"holding a job): seconds until another worker has ended all {HELD} "
                  f"({reps} runs; default OCR_WORKER_LIVENESS_SECONDS=30 and "
                  f"OCR_VISIBILITY_TIMEOUT=900; each job runs {JOB_SECONDS} s there, fake "
                  "engine)", ["kill -> all done, median s", "min s", "max s"])
    table.rows.append([median(values), min(values), max(values)])
    report = Report("dead_host", tables=[table],
                    data={"held": HELD, "job_seconds": JOB_SECONDS, "runs": runs})
    report.ratios.append(Ratio("dead host on Redis, kill -> every held job ended elsewhere, "
                               "max s", max(values), goal=f"<= {GOAL_S:g} s",
                               met=max(values) <= GOAL_S))
    return report
