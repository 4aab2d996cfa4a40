"""Where a test run's time goes: each test module's seconds and its processes' start-ups.

`ProcfileProcess` (devkit/harness.py: `record_start_up`, `take_pending`) records each
start-up in the process that runs the test (a pytest-xdist worker under `make test`);
tests/conftest.py moves them onto the test's report, which reaches the process that
prints the summary, adds the modules' seconds and prints `time_report` at the end of
the run, with each test process's seconds and how busy the machine's CPUs were
(`cpu_sample`, `cpu_line`): what tells whether one more test process would fit.
`LONGEST_FIRST` orders the longest groups of tests first, so that no long one is left
to run alone at the end.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# The groups of tests (tests/conftest.py's SHARED groups, or modules) that take longest,
# longest first, from the time table of a `make test` run: they start first, and the
# short modules fill the test processes around them (the longest-first rule of
# scheduling). Every other group keeps the order of collection, after these. The
# groups whose tests are all long forms (podman, the RabbitMQ cluster's soak) order
# `make test-long`.
LONGEST_FIRST = (
    "podman",  # tests/deploy/test_containers.py (the image built when its inputs changed)
    "rabbitmq",  # tests/queue/test_brokers.py
    "tests/clients/test_ocrmypdf_plugin.py",
    "tests/queue/test_chaos_rabbitmq.py",  # the soak on a RabbitMQ cluster of its own
    "tests/queue/test_chaos.py",
    "tests/queue/test_rabbit_cluster.py",  # a three-node RabbitMQ cluster of its own
    "tests/clients/test_cli.py",
    "tests/queue/test_failover.py",  # two failovers under 70 jobs each, ~105 s
    "tests/queue/test_dead_host.py",  # three dead hosts, one behind Sentinel, ~100 s
    "tests/engines/test_structure.py",
    "checkout",  # test_procfile, test_docs_examples, test_supervise
    "tests/queue/test_hardening.py",  # ~110 s on two busy cores
    "tests/deploy/test_redis_acl.py",  # ~105 s on two busy cores
    "tests/api/test_api_hostile.py",
    "tests/engines/test_e2e_auto_lang.py",
    "tests/engines/test_pdf.py",
    "tests/queue/test_soak_pdfs.py",
    "tests/engines/test_e2e_rapidocr.py",
)


def group_rank(group: str) -> int:
    """Where a group of tests goes in the run: its place in LONGEST_FIRST, or after them."""
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


def cpu_sample() -> tuple[int, int] | None:
    """The machine's busy and idle CPU time so far (clock ticks, /proc/stat); None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks[:8]) - idle, idle


def cpu_line(start: tuple[int, int] | None, end: tuple[int, int] | None) -> str | None:
    """How busy the machine's CPUs were between two samples, as a line of the summary."""
    if start is None or end is None:
        return None
    busy, idle = end[0] - start[0], end[1] - start[1]
    if busy + idle <= 0:
        return None
    return (f"CPU busy {100 * busy / (busy + idle):.0f}% of {os.cpu_count()} cores during "
            "the run (the whole machine's: every process on it, not only the tests')")


@dataclass(frozen=True)
class StartUp:
    """One Procfile process started and serving: where (test module), what, how long."""

    module: str
    process: str
    seconds: float


def process_lines(process_seconds: dict[str, float], modules: dict[str, set[str]]) -> list[str]:
    """One line per test process (pytest-xdist's gw0, gw1, ...): its seconds and modules."""
    return [f"{name}: {seconds:.1f} s, {len(modules.get(name, ()))} modules"
            for name, seconds in sorted(process_seconds.items())]


def time_report(module_seconds: dict[str, float], start_ups: list[StartUp]) -> list[str]:
    """Lines of a table: per test module, its seconds and its processes' start-ups."""
    starts: dict[str, list[StartUp]] = {}
    for start in start_ups:
        starts.setdefault(start.module, []).append(start)
    lines = [f"{'seconds':>8} {'start-ups':>9} {'of them s':>9}  module"]
    for module, seconds in sorted(module_seconds.items(), key=lambda m: -m[1]):
        mine = starts.get(module, [])
        lines.append(f"{seconds:8.1f} {len(mine):9d} {sum(s.seconds for s in mine):9.1f}  "
                     f"{module}")
    total = sum(module_seconds.values())
    lines.append(f"{total:8.1f} {len(start_ups):9d} "
                 f"{sum(s.seconds for s in start_ups):9.1f}  (all)")
    return lines
