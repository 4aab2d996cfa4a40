"""The chaos soak's short form on a RabbitMQ fleet: bench/chaos.py with `broker="rabbitmq"`.

The fleet of tests/queue/test_chaos.py with a three-node RabbitMQ cluster of quorum
queues as broker (tests/rabbit_cluster.py; Redis stays result backend and store), and
every kind of fault injected at least once, `stop_rabbit_leader` among them: the node
that leads the busiest job queue SIGKILLed while the load runs, started again after a
while. Nothing is timed; the checker reads events, never durations. It cannot pass
vacuously: jobs must have been accepted and read, and each fault kind injected.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.chaos import FAULTS, RABBIT_FAULTS, run
from tests.rabbit_cluster import cluster_missing


@pytest.mark.timeout(1200)  # the drain's bound and the cluster's start, not the usual run
@pytest.mark.slow
@pytest.mark.long  # a three-node cluster of its own, and the soak
def test_short_soak_on_a_rabbitmq_cluster_holds_every_promise(tmp_path: Path) -> None:
    reason = cluster_missing()
    if reason is not None:
        pytest.skip(reason)
    report = run(minutes=1.5, workdir=tmp_path / "soak", drain_seconds=300,
                 broker="rabbitmq")
    summary = {k: v for k, v in report.items() if k not in ("fault_log", "machine")}
    assert set(report["faults"]) == set(FAULTS + RABBIT_FAULTS), summary
    assert report["jobs_accepted"] >= 10, summary
    assert report["pages"] > 0 and report["callbacks"] > 0, summary
    assert report["promises"]["jobs_ran"]["held"], summary
    assert not report["broken"], {k: report["promises"][k] for k in report["broken"]}


# --- defects the soak found, each held by a test of its own --------------------------

def test_an_event_the_broker_cannot_take_does_not_cut_an_ending_short(
        caplog: pytest.LogCaptureFixture) -> None:
    """An ending's Flower event the broker cannot take is dropped, the ending goes on.

    A job ended by its worker parent (a cancel, a deadline) while RabbitMQ's node was
    down: the event raised ConnectionResetError, the ending stopped after its result
    (no callback, its claim never marked done), and the soak's drain waited for a
    callback that never came.
    """
    from tasks.queue.app import sending_app
    from tasks.queue.job_services import send_job_event
    from tasks.settings import Settings
    from tests.harness import free_port

    for broker in (f"amqp://guest:guest@127.0.0.1:{free_port()}//",
                   f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
        app = sending_app(Settings.from_env({"REDIS_URL": "redis://127.0.0.1:1/0",
                                             "BROKER_URL": broker}))
        send_job_event(app, "task-failed", "job-1", exception="x")  # returns
    assert caplog.text.count("event task-failed of job job-1 not sent") == 2
