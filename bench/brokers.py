"""Recovery from a dead worker host, per broker: seconds from SIGKILL to the job done.

Worker A (one pool child) takes a job; worker B is idle on the same queue; A's parent
and child are SIGKILLed together (a host that dies). Measured: seconds from the kill
to the job's SUCCESS, finished by B (which includes the job's own run on B,
`JOB_SECONDS`). On Redis the job comes back after the cluster-wide
visibility timeout (OCR_VISIBILITY_TIMEOUT, set low here: 30 s, 15 s with --quick;
900 by default) counted from A's delivery; on RabbitMQ as soon as the broker sees
A's connection close. Fake engine (devkit/fake_engines.py), named as such: this
measures the queue, not OCR. RabbitMQ: the local node on 127.0.0.1:5672, a vhost of
the benchmark's own; its row is skipped (and said so) where RabbitMQ is absent.
"""

from __future__ import annotations

import io
import time

from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Table, median
from devkit.harness import FAKE_PLUGINS, RedisServer, Worker
from devkit.harness import make_client as make_test_client
from devkit.rabbitmq import RabbitVhost, rabbitmq_missing

JOB_SECONDS = 0.5  # on B; on A the fake engine would take 10 min (killed long before)


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 48), shade).save(out, "PNG")
    return out.getvalue()


def _env(visibility: int) -> dict[str, str]:
    hard = visibility - 5
    return {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
            "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "1",
            "FAKE_PAGE_SECONDS": str(JOB_SECONDS), "OCR_VISIBILITY_TIMEOUT": str(visibility),
            "OCR_SOFT_TIME_LIMIT": str(hard - 2), "OCR_HARD_TIME_LIMIT": str(hard),
            "OCR_PAGE_SOFT_TIME_LIMIT": str(hard - 2), "OCR_PAGE_HARD_TIME_LIMIT": str(hard)}


def _one_kill(ctx: Context, broker_env: dict[str, str], redis_url: str, visibility: int,
              rep: int, tag: str) -> dict[str, float]:
    env = {"REDIS_URL": redis_url, **broker_env, **_env(visibility)}
    doomed = Worker(ctx.workdir / f"{tag}-{rep}-a.log",
                    {**env, "FAKE_PAGE_SECONDS": "600"}).start()
    survivor: Worker | None = None
    client = make_test_client(redis_url, **broker_env)
    try:
        job = client.submit(_png(50 + rep))
        while client.status(job).state != "STARTED":
            time.sleep(0.02)
        delivered = time.monotonic()
        survivor = Worker(ctx.workdir / f"{tag}-{rep}-b.log", env).start()
        killed = time.monotonic()
        doomed.kill()
        result = client.wait([job], timeout=visibility * 3 + 60, poll=0.05)[job]
        done = time.monotonic()
        if result.get("status") != "SUCCESS":
            raise BenchError(f"{tag}: the job did not finish elsewhere: {result}")
        # The ocr.job line is logged just after the result is stored.
        logged_by = time.monotonic() + 10
        while f'"id": "{job}"' not in survivor.log() and time.monotonic() < logged_by:
            time.sleep(0.1)
        if f'"id": "{job}"' not in survivor.log():
            raise BenchError(f"{tag}: the job was not finished by the second worker")
        return {"kill_to_done_s": done - killed, "delivered_before_kill_s": killed - delivered,
                "job_run_s": float(result["timings"]["total_seconds"])}
    finally:
        if survivor is not None:
            survivor.stop()
        doomed.stop()
        client.close()


def run(ctx: Context) -> Report:
    reps = ctx.size(3, 1)
    visibility = ctx.size(30, 15)
    (ctx.workdir / "redis").mkdir(parents=True, exist_ok=True)
    redis_server = RedisServer(ctx.workdir / "redis")
    redis_server.start()
    runs: dict[str, list[dict[str, float]]] = {}
    notes: list[str] = []
    try:
        runs["redis"] = [_one_kill(ctx, {}, redis_server.url(1), visibility, i, "redis")
                         for i in range(reps)]
        missing = rabbitmq_missing()
        if missing is None:
            vhost = RabbitVhost()
            vhost.create(consumer_timeout_ms=visibility * 1000)
            try:
                runs["amqp"] = [_one_kill(ctx, {"BROKER_URL": vhost.url()},
                                          redis_server.url(2), visibility, i, "amqp")
                                for i in range(reps)]
            finally:
                vhost.delete()
        else:
            notes.append(f"RabbitMQ row skipped: {missing}")
    finally:
        redis_server.stop()
    table = Table(f"Dead worker host (parent and child SIGKILLed): seconds until a second "
                  f"worker has finished its job ({reps} runs per broker; "
                  f"OCR_VISIBILITY_TIMEOUT={visibility} s; the job itself runs "
                  f"{JOB_SECONDS} s on the second worker, fake engine)",
                  ["broker", "kill -> done, median s", "min s", "max s",
                   "job had run before the kill, s"])
    for broker, rows in runs.items():
        values = [r["kill_to_done_s"] for r in rows]
        table.rows.append([broker, median(values), min(values), max(values),
                           median([r["delivered_before_kill_s"] for r in rows])])
    report = Report("brokers", tables=[table], notes=notes,
                    data={"visibility_timeout_s": visibility, "job_seconds": JOB_SECONDS,
                          "runs": runs})
    if "amqp" in runs:
        report.ratios.append(Ratio(
            "dead-host recovery, redis / rabbitmq (median kill -> done)",
            median([r["kill_to_done_s"] for r in runs["redis"]])
            / median([r["kill_to_done_s"] for r in runs["amqp"]]),
            note=f"visibility timeout {visibility} s; no goal"))
    return report

