"""The console's comparison of two readings of a page (tasks/console/_compare.py).

And its bounds: each reading's lines and characters, a deadline, a heavy-work turn.
"""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from tasks.api._errors import Busy, CompareTooLarge
from tasks.api._heavy import HeavyWork
from tasks.console._compare import Bounds, Row, Segment, compare, compared_rows


def shown(row: Row) -> tuple[str, str]:
    def side(parts: list[Segment]) -> str:
        return " ".join(f"[{p.kind}:{p.text}]" if p.kind != "same" else p.text for p in parts)
    return side(row.left), side(row.right)


def test_equal_lines_stay_whole_and_changed_words_are_marked() -> None:
    rows = compare(["Invoice 4471", "for garden tools", "due in May"],
                   ["Invoice 4471", "for garclen tools", "due in May", "Total 12"])
    assert [row.same for row in rows] == [True, False, True, False]
    assert shown(rows[0]) == ("Invoice 4471", "Invoice 4471")
    assert shown(rows[1]) == ("for [del:garden] tools", "for [ins:garclen] tools")
    assert shown(rows[3]) == ("", "[ins:Total 12]")


def test_markup_is_kept_as_text_for_the_template_to_escape() -> None:
    rows = compare(["<script>x</script>"], ["<img src=x onerror=y>"])
    assert shown(rows[0]) == ("[del:<script>x</script>]", "[ins:<img src=x onerror=y>]")


def test_nothing_to_compare() -> None:
    assert compare([], []) == []


def test_a_compare_past_its_deadline_is_refused() -> None:
    """The matcher checks the deadline before each search: a passed one stops it."""
    with pytest.raises(CompareTooLarge):
        compare(["a", "b", "c"], ["a", "x", "c"], deadline=time.monotonic() - 1)


def test_a_changed_pair_too_long_for_words_is_shown_whole() -> None:
    left, right = "word " * 600, "word " * 601
    row, = compare([left], [right])
    assert shown(row) == (f"[del:{left}]", f"[ins:{right}]")


@pytest.mark.parametrize(("left", "right", "bound"), [
    (["line"] * 11, ["line"], "OCR_COMPARE_MAX_LINES"),
    (["line"], ["x" * 101], "OCR_COMPARE_MAX_CHARS"),
])
def test_a_reading_past_the_bounds_is_refused_before_its_turn(
        left: list[str], right: list[str], bound: str) -> None:
    heavy = HeavyWork(concurrency=1, wait=5)
    with pytest.raises(CompareTooLarge, match=bound) as refused:
        anyio.run(compared_rows, Bounds(max_lines=10, max_chars=100, timeout=5), heavy,
                  "alice", left, right)
    assert refused.value.code == "compare_too_large" and refused.value.status == 422


async def holding(heavy: HeavyWork, client: str, release: threading.Event,
                  started: anyio.Event) -> None:
    """Heavy work of `client` that holds its turn until `release` is set."""
    def work() -> None:
        anyio.from_thread.run_sync(started.set)
        release.wait(10)

    await heavy.run(client, work)


def test_heavy_work_without_a_turn_in_time_is_busy() -> None:
    """The one turn is held: more heavy work waits on the event loop, then is refused."""
    heavy = HeavyWork(concurrency=1, wait=0.2)
    bounds = Bounds(max_lines=10, max_chars=100, timeout=5)

    async def both() -> tuple[list[Row], Busy]:
        release, started = threading.Event(), anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(holding, heavy, "alice", release, started)
            await started.wait()  # the one turn, taken
            with pytest.raises(Busy) as busy:
                await compared_rows(bounds, heavy, "bob", ["a"], ["b"])
            release.set()
        return await compared_rows(bounds, heavy, "bob", ["a"], ["a"]), busy.value

    rows, busy = anyio.run(both)
    assert [row.same for row in rows] == [True]  # the turn given back serves the next
    assert busy.code == "busy" and busy.retryable and busy.status == 503
    assert busy.headers["Retry-After"]


def test_a_client_holds_no_more_than_its_share_of_the_turns() -> None:
    """Of 4 turns, alice's many requests hold 2; bob's takes a free one at once."""
    heavy = HeavyWork(concurrency=4, wait=5)
    order: list[str] = []

    async def scenario() -> None:
        release = threading.Event()
        async with anyio.create_task_group() as group:
            held = [anyio.Event() for _ in range(2)]
            for event in held:
                group.start_soon(holding, heavy, "alice", release, event)
            for event in held:
                await event.wait()
            for name in ("alice-3", "alice-4"):  # past alice's share: they wait
                group.start_soon(heavy.run, "alice", order.append, name)
            await anyio.sleep(0.1)
            assert order == []
            await heavy.run("bob", order.append, "bob")  # a free turn, at once
            assert order == ["bob"]
            release.set()  # alice's two turns free: her next two run
        assert order[0] == "bob" and sorted(order[1:]) == ["alice-3", "alice-4"]

    anyio.run(scenario)


def test_a_freed_turn_goes_to_the_next_client_in_turn() -> None:
    """One turn, alice's second request waiting before carol's: carol is served first.

    Alice was served last (her first request holds the turn).
    """
    heavy = HeavyWork(concurrency=1, wait=5)
    order: list[str] = []

    async def scenario() -> None:
        release, started = threading.Event(), anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(holding, heavy, "alice", release, started)
            await started.wait()
            group.start_soon(heavy.run, "alice", order.append, "alice-2")
            await anyio.sleep(0.05)
            group.start_soon(heavy.run, "carol", order.append, "carol")
            await anyio.sleep(0.05)
            release.set()
        assert order == ["carol", "alice-2"]

    anyio.run(scenario)
