"""The page views' decoded results: small ones kept within a byte budget, big ones never.

`EndedResults` with a fake job service (named as one: it counts its reads and answers
a summary of the size asked) and the real heavy-work turns, on an event loop.
"""

from __future__ import annotations

from typing import Any

import anyio

from tasks.api._heavy import HEAVY_RESULT_BYTES, HeavyWork
from tasks.api._pages import EndedResults
from tasks.api.tokens import ApiClient


class FakeService:
    """A job service whose jobs' stored results are as big as `sizes` says."""

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = sizes
        self.reads: list[str] = []

    def summary(self, caller: ApiClient, job_id: str) -> tuple[None, dict[str, Any]]:
        return None, {"bytes": {"result": self.sizes[job_id]}}

    def stored(self, job_id: str) -> dict[str, Any]:
        self.reads.append(job_id)
        return {"id": job_id, "pages": []}


def views(budget: int, sizes: dict[str, int], order: list[str]) -> list[str]:
    """The jobs whose results were read, for views of `order` in turn."""
    service = FakeService(sizes)
    kept = EndedResults(budget)
    heavy = HeavyWork(2, 5.0)
    caller = ApiClient("alice", created=0.0, token_sha256="0" * 64)

    async def main() -> None:
        for job_id in order:
            result = await kept.get(service, heavy, caller, job_id)  # type: ignore[arg-type]
            assert result["id"] == job_id

    anyio.run(main)
    return service.reads


def test_a_small_result_is_read_once_and_a_big_one_for_each_view() -> None:
    sizes = {"small": 1_000, "big": HEAVY_RESULT_BYTES + 1}
    assert views(10_000, sizes, ["small", "small", "big", "big", "small"]) == \
        ["small", "big", "big"]


def test_the_kept_results_stay_within_their_byte_budget() -> None:
    sizes = {"a": 4_000, "b": 4_000, "c": 4_000}
    # the budget holds two: c pushes a out, the least lately viewed
    assert views(8_000, sizes, ["a", "b", "a", "c", "b", "a"]) == ["a", "b", "c", "b", "a"]


def test_a_big_result_waits_for_its_clients_heavy_turn() -> None:
    """With the client's one turn held, a big view is answered busy; a small one is read."""
    from tasks.api._errors import Busy

    service = FakeService({"small": 1_000, "big": HEAVY_RESULT_BYTES + 1})
    kept = EndedResults(10_000)
    heavy = HeavyWork(1, 0.2)
    caller = ApiClient("alice", created=0.0, token_sha256="0" * 64)
    answers: list[str] = []

    async def main() -> None:
        done = anyio.Event()

        async def hold() -> None:
            await heavy.run("alice", anyio.from_thread.run, done.wait)

        async with anyio.create_task_group() as group:
            group.start_soon(hold)
            await anyio.sleep(0.05)  # the holder has its turn
            try:
                await kept.get(service, heavy, caller, "big")  # type: ignore[arg-type]
            except Busy:
                answers.append("busy")
            answers.append((await kept.get(service, heavy, caller,  # type: ignore[arg-type]
                                           "small"))["id"])
            done.set()

    anyio.run(main)
    assert answers == ["busy", "small"] and service.reads == ["small"]
