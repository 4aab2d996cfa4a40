"""Redis high availability: what WAIT costs a submit, and how long a failover stops the fleet.

Real servers on loopback (devkit/ha.py): a primary, two replicas, three Sentinels
(down-after-milliseconds 1000, failover-timeout 3000: the harness's short settings; a
production Sentinel's own `down-after-milliseconds` adds to the second figure).

1. Submit latency: `OcrClient.submit` of a small PNG (upload, job record, message),
   timed one by one, with OCR_REDIS_MIN_REPLICAS 0 (no wait) and 1 and 2 (the submit
   returns once that many replicas hold the job: Redis WAIT), straight to the primary,
   and 1 through Sentinel (the default there). The rows are interleaved, submit by
   submit, so that the machine's load falls on all alike.
2. Failover: a fake-engine worker (Procfile line) and a client on the Sentinel URL;
   the primary is SIGKILLed while the fleet is idle, the client sends a job every
   0.1 s until one is accepted, and the seconds are taken from the kill to the
   Sentinels' switch, to the first job accepted, and to the first job the worker
   reads on the new primary (its STARTED state). The same through a moving endpoint
   (one fixed address, a TCP proxy pointed at the promoted replica as soon as the
   Sentinels name it, as a managed Redis's endpoint follows its failover).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from bench.common import BenchError, Context, Ratio, Report, Table, median, percentile
from devkit.ha import MovingEndpoint, RedisHA, RedisNode
from devkit.harness import FAKE_PLUGINS, Worker, make_client
from devkit.image_fixtures import png

WORKER_ENV = {"OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
              "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "1", "FAKE_PAGE_SECONDS": "0.05"}


def submit_latency(ha: RedisHA, count: int) -> dict[str, list[float]]:
    """Seconds per submit for each way of sending, interleaved."""
    ways = {"direct, 0 replicas": {"REDIS_URL": ha.primary.url(5),
                                   "OCR_REDIS_MIN_REPLICAS": "0"},
            "direct, 1 replica": {"REDIS_URL": ha.primary.url(5),
                                  "OCR_REDIS_MIN_REPLICAS": "1"},
            "direct, 2 replicas": {"REDIS_URL": ha.primary.url(5),
                                   "OCR_REDIS_MIN_REPLICAS": "2"},
            "sentinel, 1 replica": ha.env(5)}
    clients = {name: make_client(env["REDIS_URL"], **env) for name, env in ways.items()}
    data = png(130)
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    try:
        for client in clients.values():  # connections made, scripts loaded
            client.submit(data)
        for i in range(count):
            for name, client in clients.items():
                started = time.perf_counter()
                client.submit(data, filename=f"{i}.png")
                seconds[name].append(time.perf_counter() - started)
    finally:
        for client in clients.values():
            client.close()
        ha.primary.client(5).flushdb()
    return seconds


def one_failover(ctx: Context, ha: RedisHA, tag: str, db: int,
                 switch: Callable[[RedisNode], RedisNode], url: str) -> dict[str, float]:
    """Kill the primary with the fleet idle; seconds until each part is back."""
    env = {**WORKER_ENV, "REDIS_URL": url, "OCR_REDIS_SENTINEL_MASTER": "mymaster"}
    if not url.startswith("sentinel"):
        env["OCR_REDIS_MIN_REPLICAS"] = "1"
    worker = Worker(ctx.workdir / f"{tag}.log", env).start()
    client = make_client(url, **env)
    try:
        warm = client.submit(png(140))
        if client.wait([warm], timeout=60)[warm]["status"] != "SUCCESS":
            raise BenchError(f"{tag}: the fleet did not run a job before the kill")
        old = ha.kill_primary()
        killed = time.monotonic()
        switch(old)
        switched = time.monotonic()
        job = None
        while job is None and time.monotonic() - killed < 120:
            try:
                job = client.submit(png(141))
            except Exception:  # noqa: BLE001 - no primary yet: the client is told, and sends again
                time.sleep(0.1)
        if job is None:
            raise BenchError(f"{tag}: no job accepted within 120 s of the kill")
        accepted = time.monotonic()
        while client.status(job).state not in ("STARTED", "PROGRESS", "SUCCESS"):
            if time.monotonic() - killed > 180:
                raise BenchError(f"{tag}: the worker read no job within 180 s of the kill")
            time.sleep(0.02)
        read = time.monotonic()
        if client.wait([job], timeout=60)[job]["status"] != "SUCCESS":
            raise BenchError(f"{tag}: the job sent after the failover did not succeed")
        ha.rejoin(old)
        ha.wait_replicas(2)
        return {"kill_to_switch_s": switched - killed, "kill_to_accepted_s": accepted - killed,
                "kill_to_first_read_s": read - killed}
    finally:
        client.close()
        worker.stop()


def run(ctx: Context) -> Report:
    count = ctx.size(300, 30)
    reps = ctx.size(3, 1)
    ha = RedisHA(ctx.workdir / "ha").start()
    endpoint = MovingEndpoint(ha.primary.port)
    try:
        latency = submit_latency(ha, count)
        failovers: dict[str, list[dict[str, float]]] = {"sentinel": [], "moving endpoint": []}
        for rep in range(reps):
            failovers["sentinel"].append(one_failover(
                ctx, ha, f"sentinel-{rep}", 6, lambda old: ha.wait_promoted(old),
                ha.sentinel_url(6)))
            endpoint.switch(ha.primary.port)

            def moved(old: RedisNode) -> RedisNode:
                new = ha.wait_promoted(old)
                endpoint.switch(new.port)
                return new

            failovers["moving endpoint"].append(one_failover(
                ctx, ha, f"moving-{rep}", 7, moved, endpoint.url(7)))
            endpoint.switch(ha.primary.port)
    finally:
        endpoint.close()
        ha.stop()
    table = Table(f"Submit latency (OcrClient.submit of a small PNG, {count} each, "
                  "interleaved): the cost of waiting for replicas (WAIT)",
                  ["sent", "p50 ms", "p95 ms", "max ms"])
    for name, values in latency.items():
        table.rows.append([name, percentile(values, 50) * 1000, percentile(values, 95) * 1000,
                           max(values) * 1000])
    recovery = Table(f"Failover with the fleet idle ({reps} per route): seconds from the "
                     "primary's SIGKILL (Sentinel down-after 1 s)",
                     ["route", "to the switch, median", "to a job accepted, median",
                      "to the first job read, median", "first job read, max"])
    for route, rows in failovers.items():
        recovery.rows.append([route, median([r["kill_to_switch_s"] for r in rows]),
                              median([r["kill_to_accepted_s"] for r in rows]),
                              median([r["kill_to_first_read_s"] for r in rows]),
                              max(r["kill_to_first_read_s"] for r in rows)])
    p50 = {name: percentile(values, 50) for name, values in latency.items()}
    report = Report("failover", tables=[table, recovery],
                    data={"submits": count, "latency_s": latency, "failovers": failovers})
    report.ratios.append(Ratio(
        "submit p50, 1 replica kept / none (the cost of WAIT)",
        p50["direct, 1 replica"] / p50["direct, 0 replicas"],
        note="loopback replicas; across hosts WAIT adds one network round trip"))
    report.ratios.append(Ratio(
        "primary's death to the first job read on the new one, Sentinel (median s)",
        median([r["kill_to_first_read_s"] for r in failovers["sentinel"]]), goal="<= 30 s "
        "after the switch", met=all(r["kill_to_first_read_s"] - r["kill_to_switch_s"] <= 30
                                    for r in failovers["sentinel"])))
    return report

