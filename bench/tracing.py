"""The cost of tracing: the same jobs with tracing off and on, in one run.

Three Procfile workers (tesseract, two children each), alive together, each on a
database of its own: off (no OTEL_* variable), on (OTEL_EXPORTER_OTLP_ENDPOINT: an
OTLP/HTTP receiver in this process that decodes every export, devkit/otlp_receiver.py)
and on with the collector down (the endpoint's port closed: every export fails and is
dropped). One batch at a time, the three in turn, round after round and in another
order each round, so that the machine's drift falls on all three alike. Two workloads:
tiny images sent at once (the per-job cost: Celery's publish and run spans, the read,
the end, around a 25 ms read) and a 6-page scanned PDF read page by page (the fan-out:
a span per page task and read).

Two figures per batch, each as a ratio to the same round's `off` batch: its wall time
(submit to last result) and the CPU seconds the worker's processes spent on it (parent
and children, from /proc: what tracing adds to the worker, much less disturbed than
the wall time by other work on a shared machine). The medians over the rounds are the
cost.
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from typing import Any

import psutil

from bench.common import BASE_ENV, Context, Ratio, Report, Services, Table, load_doc, run_jobs
from bench.overhead import tiny_image
from devkit.harness import Worker, free_port
from devkit.otlp_receiver import OtlpReceiver

PDF = "scan_vicksburg_ocrlayer_6p.pdf"
GOAL = 1.05  # what a shared 2-core machine tells apart from noise


def cpu_seconds(worker: Worker) -> float:
    """User and system seconds of the worker parent and its living children."""
    assert worker.proc is not None
    total = 0.0
    parent = psutil.Process(worker.proc.pid)
    for process in [parent, *parent.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def run(ctx: Context) -> Report:
    rounds = ctx.size(6, 1)
    images = ctx.size(60, 6)
    workloads: dict[str, list[tuple[bytes, dict[str, Any]]]] = {
        f"{images} tiny images": [(tiny_image(), {"filename": "tiny.png"})] * images,
        "6-page scanned PDF": [(load_doc(PDF).data, {"filename": PDF, "mode": "ocr"})],
    }
    receiver = OtlpReceiver().start()
    modes = {"off": {},
             "on": {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint},
             "on, collector down": {"OTEL_EXPORTER_OTLP_ENDPOINT":
                                    f"http://127.0.0.1:{free_port()}"}}
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    traced_jobs = 0
    try:
        with Services(ctx.workdir) as services, ExitStack() as stack:
            stacks = {mode: stack.enter_context(services.stack(OCR_CONCURRENCY="2", **env))
                      for mode, env in modes.items()}
            for _, client in stacks.values():  # each child's first read
                run_jobs(client, [(tiny_image(), {"filename": "warm.png"})] * 4)
            for round_ in range(rounds):
                # each round in another order: no mode always runs first (or last)
                order = list(stacks)[round_ % 3:] + list(stacks)[:round_ % 3]
                for name, jobs in workloads.items():
                    for mode in order:
                        worker, client = stacks[mode]
                        before = cpu_seconds(worker)
                        took, _ = run_jobs(client, jobs)
                        wall.setdefault((name, mode), []).append(took)
                        cpu.setdefault((name, mode), []).append(cpu_seconds(worker) - before)
                        traced_jobs += len(jobs) if mode == "on" else 0
        received = len(receiver.spans)  # every worker stopped: each exported what it held
    finally:
        receiver.stop()
    table = Table(f"Tracing off and on: the same batches, {rounds} rounds, two pool children "
                  "a worker (median seconds; ratios: median of each round's ratio to off)",
                  ["workload", "off s", "on s", "down s", "off CPU s", "on CPU s",
                   "on/off wall", "on/off CPU", "down/off wall", "down/off CPU"])
    report = Report("tracing", tables=[table])
    for name in workloads:
        ratio = {(mode, kind): statistics.median(
            a / b for a, b in zip(figures[(name, mode)], figures[(name, "off")], strict=True))
            for mode in modes for kind, figures in (("wall", wall), ("cpu", cpu))}
        table.rows.append([
            name, statistics.median(wall[(name, "off")]), statistics.median(wall[(name, "on")]),
            statistics.median(wall[(name, "on, collector down")]),
            statistics.median(cpu[(name, "off")]), statistics.median(cpu[(name, "on")]),
            ratio[("on", "wall")], ratio[("on", "cpu")],
            ratio[("on, collector down", "wall")], ratio[("on, collector down", "cpu")]])
        report.ratios += [
            Ratio(f"{name}: tracing on / off, worker CPU", ratio[("on", "cpu")],
                  goal=f"<= {GOAL}", met=ratio[("on", "cpu")] <= GOAL),
            Ratio(f"{name}: tracing on / off, wall", ratio[("on", "wall")],
                  goal=f"<= {GOAL}", met=ratio[("on", "wall")] <= GOAL),
            Ratio(f"{name}: collector down / off, worker CPU",
                  ratio[("on, collector down", "cpu")])]
    report.data = {"rounds": rounds, "wall_s": {f"{n} | {m}": v for (n, m), v in wall.items()},
                   "worker_cpu_s": {f"{n} | {m}": v for (n, m), v in cpu.items()},
                   "spans_received": received, "traced_jobs": traced_jobs,
                   "base_env": BASE_ENV}
    report.notes.append(f"{received} spans reached the receiver from the 'on' worker "
                        f"({traced_jobs} jobs measured, plus 4 warm-up jobs)")
    return report
