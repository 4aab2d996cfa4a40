"""Weighted fair shares between clients in the broker's fetch (tasks/broker/lanes.py).

One worker, 2 children, the fake engine (devkit/fake_engines.py) at `PAGE_SECONDS` a
page: this measures the queue's scheduling, not OCR. Each part on a Redis database of
its own:

- **noisy neighbour**: client B's one-page jobs and 8-page PDFs, sent one at a time,
  on an idle service, then while client A has 2,100 one-page jobs sent (at least 2,000 waiting);
  latency from submit to result. First come, first served, B would wait for A's whole
  backlog (pages ahead / the service's pages/s, shown beside).
- **shares**: three clients with weights 1, 1, 2, each with a backlog; the pages the
  fetch hands out over a window of 240 pages (read from the lanes' lengths at the
  window's two ends, every client still backlogged at both).
- **lone client**: 300 one-page jobs sent under a client name (its lane) and sent
  anonymously (the plain kombu list, served as before lanes: `plain`), at
  `LONE_PAGE_SECONDS` a page, 3 rounds each, the order turned each round; pages/s and
  Redis commands per page (INFO commandstats, every command the service sends for a
  job, scripts' own calls included; the client polls every 0.5 s, so that its polls
  do not swamp the figure).
"""

from __future__ import annotations

import io
import time
from typing import Any

import redis
from PIL import Image

from bench.common import BenchError, Context, Ratio, Report, Table, median
from devkit.harness import FAKE_PLUGINS, FAST_PAGES, RedisServer, Worker, make_client
from devkit.pdf_fixtures import image_pdf, plain_pages
from tasks.broker.layout import LANE_WEIGHTS_KEY, list_lane_key
from tasks.client import OcrClient

PAGE_SECONDS = 0.25  # a page of real OCR is 0.5-2 s: the queue's overhead counts more here
LONE_PAGE_SECONDS = 0.05
NORMAL_LIST = "ocr\x06\x163"  # the `normal` priority's list of the `ocr` queue


def _png(n: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (64, 48), 150 + n % 100).save(out, "PNG")
    return out.getvalue()


def _worker(ctx: Context, url: str, tag: str, page_seconds: float) -> Worker:
    return Worker(ctx.workdir / f"{tag}.log",
                  {"REDIS_URL": url, "OCR_ENGINE": "fake", "OCR_ENGINE_PLUGINS": FAKE_PLUGINS,
                   "OCR_CACHE_RESULTS": "0", "OCR_CONCURRENCY": "2",
                   "FAKE_PAGE_SECONDS": str(page_seconds), **FAST_PAGES}).start(timeout=180)


def _client(url: str, name: str) -> OcrClient:
    client = make_client(url)
    client.client = name
    return client


def _latency(client: OcrClient, data: bytes, **options: Any) -> float:
    started = time.perf_counter()
    job = client.submit(data, **options)
    result = client.wait([job], timeout=600, poll=0.02)[job]
    if result.get("status") != "SUCCESS":
        raise BenchError(f"B's job did not succeed: {result}")
    return time.perf_counter() - started


def _b_jobs(client: OcrClient, pdf: bytes, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"image": [], "pdf8": []}
    for n in range(rounds):
        out["image"].append(_latency(client, _png(n), filename=f"b{n}.png"))
        out["pdf8"].append(_latency(client, pdf, filename=f"b{n}.pdf", mode="ocr"))
    return out


def noisy_neighbour(ctx: Context, url: str) -> dict[str, Any]:
    backlog = ctx.size(2100, 200)  # >= 2,000 waiting once sent (the worker reads meanwhile)
    rounds = ctx.size(4, 2)
    worker = _worker(ctx, url, "noisy", PAGE_SECONDS)
    a, b = _client(url, "client-a"), _client(url, "client-b")
    r = redis.Redis.from_url(url)
    pdf = image_pdf(plain_pages(8))
    try:
        idle = _b_jobs(b, pdf, rounds)
        started = time.perf_counter()
        jobs = [a.submit(_png(n), filename=f"a{n}.png") for n in range(backlog)]
        sent_s = time.perf_counter() - started
        before = time.perf_counter()
        left_before = r.llen(list_lane_key(NORMAL_LIST, "client-a"))
        busy = _b_jobs(b, pdf, rounds)
        left_after = r.llen(list_lane_key(NORMAL_LIST, "client-a"))
        rate = (left_before - left_after) / (time.perf_counter() - before)
        waiting_min = left_after
        waiting_start = left_before
    finally:
        worker.stop()
        a.close()
        b.close()
        r.close()
    return {"backlog": backlog, "backlog_sent_s": sent_s, "idle": idle, "busy": busy,
            "a_waiting_at_start": waiting_start, "a_waiting_at_end": waiting_min,
            "service_pages_per_s": rate,
            "fifo_wait_estimate_s": left_before / rate if rate else None,
            "a_jobs": len(jobs)}


def shares(ctx: Context, url: str) -> dict[str, Any]:
    window = ctx.size(240, 80)
    per_client = ctx.size(200, 80)
    weights = {"w1-a": 1, "w1-b": 1, "w2": 2}
    r = redis.Redis.from_url(url)
    r.hset(LANE_WEIGHTS_KEY, mapping={name: str(w) for name, w in weights.items()})
    worker = _worker(ctx, url, "shares", PAGE_SECONDS / 4)
    senders = {name: _client(url, name) for name in weights}
    lanes = [list_lane_key(NORMAL_LIST, name) for name in weights]
    try:
        for n in range(per_client):
            for name, sender in senders.items():
                sender.submit(_png(n), filename=f"{name}{n}.png")

        def waiting() -> list[int]:
            pipe = r.pipeline()
            for lane in lanes:
                pipe.llen(lane)
            return list(pipe.execute())

        start = waiting()
        end = start
        deadline = time.monotonic() + 300
        while sum(start) - sum(end) < window and time.monotonic() < deadline:
            time.sleep(0.02)
            end = waiting()
    finally:
        worker.stop()
        for sender in senders.values():
            sender.close()
        r.close()
    taken = [s - e for s, e in zip(start, end, strict=True)]
    if min(end) <= 0 or sum(taken) < window:
        raise BenchError(f"the shares' window did not hold: start {start}, end {end}")
    return {"weights": weights, "start": start, "end": end, "taken": taken,
            "shares_pct": [100 * t / sum(taken) for t in taken]}


def _commands(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return sum(int(v["calls"]) for v in stats.values())


def lone(ctx: Context, url: str) -> dict[str, Any]:
    count = ctx.size(300, 60)
    worker = _worker(ctx, url, "lone", LONE_PAGE_SECONDS)
    r = redis.Redis.from_url(url)
    runs: dict[str, list[dict[str, float]]] = {"lane": [], "plain": []}
    named, anonymous = _client(url, "lone-client"), _client(url, "")
    try:
        for n in range(ctx.size(3, 1)):
            order = (("plain", anonymous), ("lane", named))
            for mode, client in order if n % 2 == 0 else order[::-1]:
                r.config_resetstat()
                started = time.perf_counter()
                jobs = [client.submit(_png(n), filename=f"{n}.png") for n in range(count)]
                results = client.wait(jobs, timeout=600, poll=0.5)
                seconds = time.perf_counter() - started
                calls = _commands(r)
                if {x["status"] for x in results.values()} != {"SUCCESS"}:
                    raise BenchError(f"a {mode} job failed")
                runs[mode].append({"pages_per_s": count / seconds,
                                   "commands_per_page": calls / count})
    finally:
        worker.stop()
        named.close()
        anonymous.close()
        r.close()
    return {"pages": count, "runs": runs}


def run(ctx: Context) -> Report:
    (ctx.workdir / "redis").mkdir(parents=True, exist_ok=True)
    server = RedisServer(ctx.workdir / "redis")
    server.start()
    try:
        noisy = noisy_neighbour(ctx, server.url(1))
        share = shares(ctx, server.url(2))
        alone = lone(ctx, server.url(3))
    finally:
        server.stop()
    report = Report("fairness", data={"page_seconds": PAGE_SECONDS, "noisy": noisy,
                                      "shares": share, "lone": alone})
    page = PAGE_SECONDS
    table = Table(f"Noisy neighbour: client B's jobs one at a time, idle vs while client A "
                  f"has {noisy['backlog']} one-page jobs waiting (fake engine {page} s a "
                  f"page, 2 children); median s", ["B's job", "idle", "behind A",
                                                   "ratio", "goal: <= 2 x idle + a page"])
    for kind in ("image", "pdf8"):
        idle, busy = median(noisy["idle"][kind]), median(noisy["busy"][kind])
        worst = max(noisy["busy"][kind])
        table.rows.append([kind, idle, busy, busy / idle, 2 * idle + page])
        report.ratios.append(Ratio(f"noisy neighbour: B's {kind} behind A's backlog / "
                                   "(2 x idle + one page), worst of the runs",
                                   worst / (2 * idle + page), "<= 1", worst <= 2 * idle + page))
    report.tables.append(table)
    report.notes.append(
        f"first come, first served, B's job would have waited about "
        f"{noisy['fifo_wait_estimate_s']:.0f} s behind A's backlog "
        f"({noisy['service_pages_per_s']:.1f} pages/s); A had {noisy['a_waiting_at_start']} "
        f"pages waiting when B's first job was sent, {noisy['a_waiting_at_end']} after its "
        "last")
    share_table = Table(f"Shares over a window of {sum(share['taken'])} pages, three "
                        "backlogged clients", ["client", "weight", "pages", "share %",
                                               "expected %"])
    expected = (25.0, 25.0, 50.0)
    for (name, weight), taken, pct, want in zip(share["weights"].items(), share["taken"],
                                               share["shares_pct"], expected, strict=True):
        share_table.rows.append([name, weight, taken, pct, want])
    report.tables.append(share_table)
    off = max(abs(p - e) for p, e in zip(share["shares_pct"], expected, strict=True))
    report.ratios.append(Ratio("shares 1:1:2, largest distance from 25/25/50 (points)", off,
                               "<= 5", off <= 5))
    runs = alone["runs"]
    lone_table = Table(f"A lone client, {alone['pages']} one-page jobs (fake engine, "
                       f"{LONE_PAGE_SECONDS} s a page), medians of {len(runs['lane'])} rounds",
                       ["fetch", "pages/s", "Redis commands/page"])
    for mode in ("plain", "lane"):
        lone_table.rows.append([mode, median([x["pages_per_s"] for x in runs[mode]]),
                                median([x["commands_per_page"] for x in runs[mode]])])
    report.tables.append(lone_table)
    speed = median([x["pages_per_s"] for x in runs["lane"]]) / \
        median([x["pages_per_s"] for x in runs["plain"]])
    cost = median([x["commands_per_page"] for x in runs["lane"]]) / \
        median([x["commands_per_page"] for x in runs["plain"]])
    report.ratios.append(Ratio("lone client pages/s, lane / plain", speed, ">= 0.95",
                               speed >= 0.95))
    report.ratios.append(Ratio("Redis commands per page, lane / plain", cost, "<= 1.10",
                               cost <= 1.10))
    return report
