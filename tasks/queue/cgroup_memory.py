"""The memory cgroup a worker runs in (its container's): working set and limit.

Runs in worker pool children (and a thread-pool worker's process), read after each task
for the `ocr_child_cgroup_memory_*` gauges (tasks/queue/telemetry.py): an alert fires
before the kernel's OOM killer ends a child mid-page. Linux cgroup v2 (`memory.current`,
`memory.max`) or v1 (`memory.usage_in_bytes`, `memory.limit_in_bytes`); the working set
is the usage less the inactive file pages, as the kubelet counts it. Nothing where the
cgroup has no limit, or elsewhere than Linux.
"""

from __future__ import annotations

from pathlib import Path

from tasks.state.metrics import Sample

ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 2**60  # cgroup v1 writes a page-rounded 2^63 for "no limit"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _inactive_file(stat: str | None, key: str) -> int:
    for line in (stat or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.isdigit():
            return int(value)
    return 0


def _own_dir(root: Path, controllers: str, probe: str) -> Path:
    """The cgroup directory of this process under `root` (from /proc/self/cgroup).

    `controllers` is the line's middle field ("" for v2, "memory" for v1); a path that
    is not mounted here (no `probe` file) is the container's own root.
    """
    for line in (_read(Path("/proc/self/cgroup")) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) < 3:
            continue
        mine = parts[1] == "" if not controllers else controllers in parts[1].split(",")
        candidate = root / parts[2].lstrip("/")
        if mine and (candidate / probe).exists():
            return candidate
    return root


def usage_and_limit(root: Path = ROOT) -> tuple[int, int] | None:
    """(working set, limit) in bytes of this process's memory cgroup; None: no limit."""
    where = _own_dir(root, "", "memory.current")
    current, limit = _read(where / "memory.current"), _read(where / "memory.max")
    key = "inactive_file"
    if current is None or limit is None:
        where = _own_dir(root / "memory", "memory", "memory.usage_in_bytes")
        current = _read(where / "memory.usage_in_bytes")
        limit = _read(where / "memory.limit_in_bytes")
        key = "total_inactive_file"
    if not (current and current.isdigit() and limit and limit.isdigit()):
        return None  # "max": no limit; or no memory cgroup at all
    if int(limit) >= UNLIMITED:
        return None
    working = max(int(current) - _inactive_file(_read(where / "memory.stat"), key), 0)
    return working, int(limit)


def samples() -> list[Sample]:
    """The child's `ocr_child_cgroup_memory_bytes` and `..._limit_bytes` gauges."""
    found = usage_and_limit()
    if found is None:
        return []
    working, limit = found
    return [("ocr_child_cgroup_memory_bytes", {}, float(working)),
            ("ocr_child_cgroup_memory_limit_bytes", {}, float(limit))]
