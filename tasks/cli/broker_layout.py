"""`ocr_admin.py migrate-broker`: a Redis broker of layout 1 or 2 moved into layout 3, once.

Runs in the operator's process, on a Redis last written by a release before layout 3
(tasks/broker/stored_layout.py, `migrate`), with no worker of that release alive. Prints
what it moved, as JSON with `--json`; a run on a Redis of layout 3 moves nothing and
stores nothing new.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Protocol

from tasks.broker import stored_layout
from tasks.broker.layout import LAYOUT_VERSION
from tasks.cli.core import EXIT_FAILURE, EXIT_OK
from tasks.client import OcrClient
from tasks.state.connection import connect
from tasks.state.liveness import WorkerPresence

MIGRATE_SUMMARY = ("move a Redis broker of a release before layout 3 into layout 3 (once, "
                   "with that release's workers stopped)")


class Context(Protocol):
    @property
    def client(self) -> OcrClient: ...


def add_migrate_command(commands: Any) -> None:
    """The `migrate-broker` subcommand of ocr_admin.py."""
    migrate = commands.add_parser("migrate-broker", help=MIGRATE_SUMMARY,
                                  description=MIGRATE_SUMMARY)
    migrate.add_argument("--json", action="store_true", help="one JSON record")


def run_migrate(args: argparse.Namespace, session: Context,
                prog: str = "ocr_admin.py") -> int:
    """Move the session's broker into layout 3; a coded line when it is refused."""
    client = session.client
    if client.settings.broker_target is None:
        print(f"{prog} migrate-broker: the broker is RabbitMQ: nothing to move")
        return EXIT_OK
    store = connect(client.settings.redis_target)
    try:
        records = WorkerPresence(store).records()
    finally:
        store.close()
    try:
        with client.app.connection_for_write() as conn:
            moved = stored_layout.migrate(conn.default_channel, records)
    except (stored_layout.OlderWorkerAlive, stored_layout.LayoutNewer) as exc:
        print(f"{prog} migrate-broker: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    report = moved.as_json()
    if args.json:
        print(json.dumps(report))
    else:
        print(f"broker layout {moved.stored or 'none'} -> {LAYOUT_VERSION}: "
              f"{moved.waiting} waiting message(s) of {moved.lanes} lane(s) moved, "
              f"{moved.held + moved.unacked} unacked message(s) put back on their queues, "
              f"{moved.dropped} old ring and wake-up key(s) dropped")
    return EXIT_OK
