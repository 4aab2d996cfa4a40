"""Simulated workers for `bench/fleet_scale.py`: many worker parents' Redis traffic, no pool.

Run as `python -m bench._fleet_sim --workers K --node-prefix P` with the environment
of a worker (REDIS_URL, the fake engine). One process holds K simulated workers, each a
thread doing what a Celery worker parent with the solo pool does against Redis, through
the same code (with `--hold`, each waits for SIGUSR1 before it consumes tasks):

- its consumer: a kombu connection of the worker's own app (`tasks.queue.app.create_app`:
  the broker transport and its options, `ocr_idle_wait` included), registered with a
  kombu event loop (`Hub`) as Celery's worker registers it, so the transport's timers
  (the restore of unacknowledged messages, health checks) run as in a worker; it
  consumes `ocr-control`, `ocr` and the node's direct queue, prefetch 1, and its
  callback is a no-op that acknowledges the message (a null task: nothing is run,
  stored or published for it); remote control's pidbox (a SUBSCRIBE, with kombu's
  health check of it) on a second channel, as Celery's `Pidbox` opens it;
- its event heartbeat: Celery's own `Heart` (worker-online, a worker-heartbeat every
  5 s as the Procfile's worker sends them, worker-offline) on a second connection;
- on each heartbeat, its presence record (`tasks.state.liveness.WorkerPresence`) and the
  sweep of dead holders (`tasks.broker.holders.HolderSweep`), as tasks/queue/presence.py
  does.

Not simulated: the pool (no child processes: no task runs, so a busy worker here
costs Redis only its fetch and acknowledgement, not a page's state, results and
notices), Flower's events (off unless Flower runs). Prints `ready` once every worker
is connected and beating, and runs until SIGTERM; then each worker stops as a warm
shutdown does (offline event, presence withdrawn) and the process prints its
acknowledged messages as `acked N`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Any

import redis
from celery.utils import worker_direct
from celery.worker.heartbeat import Heart
from kombu import Consumer
from kombu.asynchronous import Hub

from tasks.broker import holders
from tasks.queue.app import create_app
from tasks.queue.routing import CONTROL_QUEUE, DEFAULT_QUEUE
from tasks.records.engines import engine_names
from tasks.settings import Settings
from tasks.state.liveness import PRESENCE_TTL, WorkerPresence

HEARTBEAT = 5.0  # the Procfile worker's event heartbeat (tasks/queue/presence.py)


class SimulatedWorker(threading.Thread):
    """One worker parent's Redis traffic (see the module's docstring)."""

    def __init__(self, app: Any, settings: Settings, node: str, stop: threading.Event,
                 go: threading.Event) -> None:
        super().__init__(name=node, daemon=True)
        self.app, self.settings, self.node = app, settings, node
        self.stop, self.go = stop, go
        # Its own connections, as a worker process has (a process's shared pool of
        # tasks/state/connection.py is bounded: 250 threads would exhaust it).
        self.store = redis.Redis.from_url(settings.redis_target.url)
        self.presence = WorkerPresence(self.store, keep=settings.worker_liveness_seconds)
        self.acked = 0
        self.consuming = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        finally:  # a worker that died: its traceback is on stderr, the process fails
            self.consuming.set()

    def _run(self) -> None:
        app, node = self.app, self.node
        hub = Hub()
        conn = app.connection_for_read()
        conn.ensure_connection(max_retries=3)
        queues = [app.amqp.queues[CONTROL_QUEUE], app.amqp.queues[DEFAULT_QUEUE],
                  worker_direct(node)]
        consumer = Consumer(conn.default_channel, queues=queues, callbacks=[self.on_message],
                            accept=["json"])
        consumer.qos(prefetch_count=1)
        conn.transport.register_with_event_loop(conn.connection, hub)
        mailbox = app.control.mailbox.Node(node, handlers={})  # remote control's pidbox
        mailbox.channel = conn.channel()
        pidbox = mailbox.listen(callback=lambda body, message: None)
        events = app.connection_for_write()
        dispatcher = app.events.Dispatcher(events, hostname=node, enabled=True)
        heart = Heart(hub.timer, dispatcher, interval=HEARTBEAT)
        heart.start()
        options = dict(app.conf.broker_transport_options or {})
        if self.settings.broker_target is None:
            raise SystemExit("the simulated fleet needs a Redis broker")
        sweep = holders.HolderSweep(
            redis.Redis.from_url(self.settings.broker_target.url), self.store,
            self.settings.worker_liveness_seconds, PRESENCE_TTL,
            prefix=str(options.get("global_keyprefix") or ""))
        engines = engine_names(tuple(self.settings.engine_plugins))
        names = [q.name for q in queues]

        def refresh() -> None:
            self.presence.publish(node, names, engines=engines, pid=os.getpid())
            sweep.tick()

        refresh()
        hub.call_repeatedly(HEARTBEAT, refresh)
        self.consuming.set()
        loop = hub.create_loop()
        consuming = False
        try:
            while not self.stop.is_set():
                if not consuming and self.go.is_set():
                    consumer.consume()
                    consuming = True
                next(loop)
        finally:
            heart.stop()
            self.presence.withdraw(node)
            consumer.cancel()
            pidbox.cancel()
            hub.close()
            dispatcher.close()
            events.release()
            conn.release()

    def on_message(self, body: Any, message: Any) -> None:
        """The null task: acknowledge, nothing else."""
        message.ack()
        self.acked += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet_sim")
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--node-prefix", required=True)
    parser.add_argument("--hold", action="store_true",
                        help="connect, beat and listen, but consume tasks only after SIGUSR1")
    args = parser.parse_args(argv)
    settings = Settings.from_env(dict(os.environ))
    app = create_app(settings)
    stop = threading.Event()
    go = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGUSR1, lambda *_: go.set())
    if not args.hold:
        go.set()
    nodes = [f"{args.node_prefix}-{n}@fleet" for n in range(args.workers)]
    holders.set_node(nodes[0])  # the holder the fetches record: a node with presence
    workers = [SimulatedWorker(app, settings, node, stop, go) for node in nodes]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.consuming.wait()
    failed = [w for w in workers if not w.is_alive()]
    if failed:
        print(f"failed {failed[0].node}", flush=True)
        stop.set()
        return 1
    print("ready", flush=True)  # connected and beating; consuming unless held
    stop.wait()
    for worker in workers:
        worker.join(30)
    print(f"acked {sum(w.acked for w in workers)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
