"""Where a test run's time goes: each test module's seconds and its processes' start-ups.

`ProcfileProcess` (tests/harness.py) records each start-up in the process that runs the
test (a pytest-xdist worker under `make test`); tests/conftest.py moves them onto the
test's report, which reaches the process that prints the summary, adds the modules'
seconds and prints `time_report` at the end of the run.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StartUp:
    """One Procfile process started and serving: where (test module), what, how long."""

    module: str
    process: str
    seconds: float


# Start-ups recorded in this process since the last report took them.
_PENDING: list[tuple[str, float]] = []


def record_start_up(process: str, seconds: float) -> None:
    """Count one start-up of the test running now (its report takes it)."""
    _PENDING.append((process, seconds))


def take_pending() -> list[tuple[str, float]]:
    """The start-ups recorded since the last call, to go onto the current test's report."""
    taken = list(_PENDING)
    _PENDING.clear()
    return taken


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
