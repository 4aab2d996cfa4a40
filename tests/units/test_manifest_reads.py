"""A person's view of a batch reads a bounded part of its manifest, whatever its size.

The console's batch page reads the steps' parts through `first_latest_lines`
(tasks/lifecycle/batch_manifest.py): at most its lines, from at most one part more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tasks.lifecycle.batch_local import LocalTarget
from tasks.lifecycle.batch_manifest import first_latest_lines, latest_lines, write_part


@dataclass(frozen=True)
class CountingTarget(LocalTarget):
    """A folder target that counts the parts read."""

    got: list[str] = field(default_factory=list)

    def get(self, name: str) -> bytes | None:
        self.got.append(name)
        return super().get(name)


def parts(target: LocalTarget, count: int, lines: int) -> None:
    for p in range(count):
        write_part(target, [{"name": f"doc-{p:04d}-{i}.png", "status": "SUCCESS"}
                            for i in range(lines)])


def test_a_large_manifest_is_read_only_as_far_as_the_bound(tmp_path: Path) -> None:
    target = CountingTarget(tmp_path)
    parts(target, count=200, lines=3)  # 600 lines
    lines, more = first_latest_lines(target, 30)
    assert more and len(lines) == 30
    assert len(target.got) <= 31  # of 200 parts
    assert [line["name"] for line in lines] == sorted(line["name"] for line in lines)


def test_a_small_manifest_is_read_whole(tmp_path: Path) -> None:
    target = CountingTarget(tmp_path)
    parts(target, count=4, lines=3)
    assert first_latest_lines(target, 30) == (latest_lines(target), False)
