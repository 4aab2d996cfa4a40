"""Which holders the sweep of dead holders counts as live (tasks/state/liveness.py)."""

from __future__ import annotations

import json

from tasks.state.liveness import PRESENCE_TTL, live_holders


def record(refreshed: float, pid: int | None = None) -> str:
    fields: dict[str, object] = {"queues": ["ocr"], "expires": refreshed + PRESENCE_TTL}
    if pid is not None:
        fields["pid"] = pid
    return json.dumps(fields)


def test_a_holder_is_live_while_its_node_refreshed_within_the_window() -> None:
    now = 1000.0
    live, known = live_holders({"fresh@h": record(now - 2, 11),
                                "silent@h": record(now - 31, 12),
                                "edge@h": record(now - 30, 13), "old@h": record(now - 5),
                                "junk@h": "not json"}, now, 30.0, PRESENCE_TTL)
    # every node with a record is known (a holder of it with another pid is dead)
    assert known == {"fresh@h", "silent@h", "edge@h", "old@h", "junk@h"}
    # live: the refreshed pid; a record without pid makes any pid of its node live
    assert live == {"fresh@h|11", "edge@h|13", "old@h|*"}
