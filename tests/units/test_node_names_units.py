"""Whose a node name is: the worker's own, a crashed one's, or a live twin's."""

from __future__ import annotations

import socket

from tasks.queue.presence import name_holder, node_name


def test_a_worker_given_no_name_is_named_from_worker_name() -> None:
    host = socket.gethostname()
    assert node_name(f"celery@{host}", {"WORKER_NAME": "x"}) == f"x@{host}"
    assert node_name(f"celery@{host}", {}) == f"cpu@{host}"
    assert node_name(f"control@{host}", {"WORKER_NAME": "x"}) == f"control@{host}"


def test_a_live_record_of_another_pid_holds_the_name() -> None:
    def alive(pid: int) -> bool:
        return pid == 7

    live = {"pid": 7, "host": "h"}
    assert name_holder(None, 9, "h", alive) is None
    assert name_holder(live, 7, "h", alive) is None  # its own (restarted in place)
    assert name_holder(live, 9, "h", alive) == live  # a live twin on this host
    assert name_holder({"pid": 5, "host": "h"}, 9, "h", alive) is None  # crashed
    assert name_holder({"pid": 5, "host": "g"}, 9, "h", alive) is not None  # elsewhere
    assert name_holder({"pid": 7, "host": "g"}, 7, "h", alive) is not None
