"""The chaos soak's short form: bench/chaos.py for about 1.5 minutes of load.

A real fleet (Redis with its append-only file, a prefork tesseract worker, a thread-pool
vlm-api worker against the simulated inference server, two API processes, a webhook
receiver, moto's S3) under mixed load, with every kind of fault injected at least once
(the load runs on until each was). Nothing here is timed: the drain waits for every
job's ending (up to 5 minutes: a job a killed worker held comes back after the
fleet's 60 s visibility timeout), and the checker reads events (endings, callbacks,
results, events streams, keys, files), never durations; a job that never ends breaks
`one_ending` when the drain's bound is reached.
It cannot pass vacuously: jobs must have been accepted and read, and each fault kind
injected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAULTS, run


@pytest.mark.timeout(900)  # the drain's bound and more, not the soak's usual ~1.5 minutes
@pytest.mark.slow
@pytest.mark.long  # each promise it holds has a test of its own in `make test`
def test_short_soak_holds_every_promise(tmp_path: Path) -> None:
    report = run(minutes=1.5, workdir=tmp_path / "soak", drain_seconds=300)
    summary = {k: v for k, v in report.items() if k not in ("fault_log", "machine")}
    assert set(report["faults"]) == set(FAULTS), summary  # every kind, at least once
    assert report["jobs_accepted"] >= 10, summary
    assert report["pages"] > 0 and report["callbacks"] > 0, summary
    assert report["promises"]["jobs_ran"]["held"], summary
    assert not report["broken"], {k: report["promises"][k] for k in report["broken"]}


# --- defects the soak found, each held by a test of its own --------------------------

def test_channel_of_a_released_connection_fails_as_a_connection_error() -> None:
    """Redis restarted while a worker held unacked messages: the worker must survive.

    kombu closes the channel of a connection it already released and restores the
    unacked messages through it; the address lookup met `client=None` and raised
    AttributeError, an "Unrecoverable error" that ended the worker parent (the first
    short soak: the prefork worker gone after a Redis restart, a job stranded). Now it
    is a connection error, which kombu's close ignores (`ignore_errors`).
    """
    from types import SimpleNamespace

    import redis.exceptions
    from kombu.common import ignore_errors

    from tasks.broker.transport import Channel, Transport

    released = SimpleNamespace(connection=SimpleNamespace(client=None),
                               ocr_max_message_bytes=0)
    with pytest.raises(redis.exceptions.ConnectionError):
        Channel._pool_params(released)  # type: ignore[arg-type]
    owner = SimpleNamespace(connection_errors=Transport.connection_errors, channel_errors=())
    with ignore_errors(owner):  # what kombu's close wraps the restore in
        Channel._pool_params(released)  # type: ignore[arg-type]


def test_a_broken_promise_carries_its_log(tmp_path: Path) -> None:
    """The soak's report gives each broken promise the log lines behind it.

    A worker that died: the tail of its log (its last words, the cause); a job not
    ended or without its callback: every line of the fleet's logs that names it.
    """
    from bench.chaos import promise_log

    job, other = "0b7f6c2e-1d2a-4c11-9a55-6f4f1b1c2d3e", "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b"
    (tmp_path / "chaos-cpu-2.log").write_text("".join(f"line {n}\n" for n in range(100))
                                              + "consumer: Cannot connect\n")
    (tmp_path / "api-0-1.log").write_text(f"sent {job}\nsent {other}\nidle\n")
    died = {"held": False, "died": [{"at": 76.5, "kind": "died",
                                     "detail": "chaos-cpu: exit 1, log chaos-cpu-2.log"}]}
    lines = promise_log(tmp_path, died)
    assert lines[-1] == "chaos-cpu-2.log: consumer: Cannot connect"
    assert len(lines) == 60 and lines[0] == "chaos-cpu-2.log: line 41"
    assert promise_log(tmp_path, {"held": False, "unended": [job]}) == \
        [f"api-0-1.log: sent {job}"]
