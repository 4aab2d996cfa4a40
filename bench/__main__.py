"""Run the benchmarks: `python -m bench [--quick] [--only NAME ...]`.

Each benchmark prints its tables, then writes `<name>.json` (figures, ratios, machine
facts) and `<name>.png` under `bench/results/` (`bench/results/quick/` with --quick,
which is not committed). The run ends with every ratio, met or not, and exits 1 when a
benchmark could not run.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import RESULTS, Context, Report, machine_info, pin_threads
from devkit.corpus import CORPUS, CORPUS_MISSING

BENCHMARKS = ("pipeline", "overhead", "api", "peers", "digital", "memory", "blank", "vlm",
              "brokers", "breakdown", "languages", "vlm_api", "object_storage",
              "structure", "vlm_fleet", "ocrmypdf", "tracing", "failover", "fairness",
              "batch", "idle_fleet", "dead_host", "queue_cost", "fleet_scale", "accuracy",
              "console", "escalation", "first_result")
log = logging.getLogger("bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes for a smoke test (results in bench/results/quick)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, metavar="NAME",
                        help=f"run only these: {', '.join(BENCHMARKS)}")
    parser.add_argument("--results", type=Path, help="write results here instead")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    pin_threads()

    results_dir = args.results or (RESULTS / "quick" if args.quick else RESULTS)
    results_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {machine['cpu_count']} cpus ({machine['cpu_model']}), "
          f"{machine['memory_gb']} GB, load {machine['loadavg']}, {machine['platform']}")
    print(f"GPU: not benchmarked; no device machine was lent when this harness was written, "
          f"so every number below is CPU only (detected here: {machine['gpu']})")
    if machine["loadavg"][0] > 0.5:
        print(f"warning: 1-minute load average {machine['loadavg'][0]} before the run: other "
              "work on this machine skews the numbers (each JSON records the load)")
    if not CORPUS.is_dir():
        print(f"warning: {CORPUS_MISSING}: the benchmarks that read the corpus fail "
              "(docs/testing.md, \"The corpus\")")
    names = args.only or list(BENCHMARKS)
    reports: list[Report] = []
    failed: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ocr-bench-") as tmp:
        for name in names:
            ctx = Context(quick=args.quick, workdir=Path(tmp) / name, results_dir=results_dir)
            ctx.workdir.mkdir(parents=True)
            print(f"\n=== {name}{' (quick)' if args.quick else ''} ===", flush=True)
            t0 = time.perf_counter()
            load_before = os.getloadavg()[0]
            try:
                module = importlib.import_module(f"bench.{name}")
                report: Report = module.run(ctx)
            except Exception:
                # One broken benchmark must not hide the others' numbers.
                log.exception("benchmark %s failed", name)
                failed.append(name)
                continue
            seconds = time.perf_counter() - t0
            report.data["loadavg_1min"] = {"before": round(load_before, 2),
                                           "after": round(os.getloadavg()[0], 2)}
            write(report, ctx, machine, seconds)
            reports.append(report)
            print(f"({name}: {seconds:.0f} s)", flush=True)
    total = time.perf_counter() - started
    print_summary(reports, failed, total)
    return 1 if failed else 0


def write(report: Report, ctx: Context, machine: dict[str, Any], seconds: float) -> None:
    for table in report.tables:
        print(table.render(), end="\n\n")
    for note in report.notes:
        print(f"note: {note}")
    payload = {
        "benchmark": report.name,
        "quick": ctx.quick,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": machine,
        "ratios": [vars(r) for r in report.ratios],
        "notes": report.notes,
        "tables": [{"title": t.title, "headers": list(t.headers),
                    "rows": [list(r) for r in t.rows]} for t in report.tables],
        "data": report.data,
    }
    path = ctx.results_dir / f"{report.name}.json"
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if report.figure is not None:
        report.figure.savefig(ctx.results_dir / f"{report.name}.png", dpi=110)
    print(f"wrote {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}"
          f"{' and .png' if report.figure is not None else ''}")


def print_summary(reports: list[Report], failed: list[str], total: float) -> None:
    print("\n=== ratios ===")
    for report in reports:
        for ratio in report.ratios:
            print(f"[{report.name}] {ratio.line()}")
    print("[gpu] not measured: no GPU benchmark (no device machine was available)")
    for name in failed:
        print(f"[{name}] FAILED to run (see the traceback above)")
    print(f"total: {total:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
