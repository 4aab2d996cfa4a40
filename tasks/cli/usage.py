"""`ocr_admin.py usage [--from D] [--to D] [--client NAME]`: pages read per client per day.

Runs in the operator's process. Reads the workers' page counts (tasks/state/usage.py):
every client's (or one's) pages on each day of a range (UTC dates, both included; the
last 30 days by default), with each client's total and caps, as one JSON object.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any, Protocol

from tasks.cli.core import EXIT_OK, EXIT_USAGE
from tasks.errors import BadRequest
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.usage import PageUsage, date_range, engine_totals

USAGE_SUMMARY = "pages read per client per day (UTC), as JSON; the last 30 days by default"


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...


def add_usage_command(commands: Any) -> None:
    """The `usage` subcommand of ocr_admin.py."""
    usage = commands.add_parser("usage", help=USAGE_SUMMARY, description=USAGE_SUMMARY)
    usage.add_argument("--from", dest="start", metavar="YYYY-MM-DD",
                       help="first day (default: 29 days before --to)")
    usage.add_argument("--to", dest="end", metavar="YYYY-MM-DD", help="last day (default: today)")
    usage.add_argument("--client", metavar="NAME",
                       help='one client ("" for the anonymous client); default: every one')


def usage_report(usage: PageUsage, first: dt.date, last: dt.date,
                 client: str | None = None) -> dict[str, Any]:
    """{"from", "to", "clients": [{"client", "total", "days", "engines", caps}]}.

    `days`: {date: pages}; `engines`: the pages by engine over the range (an escalated
    page counts for both engines); `engine_days`: {date: {engine: pages}};
    `engine_pages_per_day`: the client's caps a day by engine.
    """
    found = ({client: usage.by_day(client, first, last)} if client is not None
             else usage.every_client(first, last))
    by_engine = usage.engines_by_day(first, last, client)
    clients = []
    for name, by_day in found.items():
        caps = usage.caps(name)
        engine_days = by_engine.get(name, {})
        clients.append({"client": name, "total": sum(by_day.values()), "days": by_day,
                        "engines": engine_totals(engine_days), "engine_days": engine_days,
                        "pages_per_day": caps.pages_per_day,
                        "pages_per_month": caps.pages_per_month,
                        "engine_pages_per_day": dict(caps.engines)})
    return {"from": first.isoformat(), "to": last.isoformat(), "clients": clients}


def run_usage(args: argparse.Namespace, session: Context, prog: str = "ocr_admin.py") -> int:
    """Print the usage report of the session's Redis as one JSON object."""
    try:
        first, last = date_range(args.start, args.end)
    except BadRequest as exc:
        print(f"{prog}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    redis_client = connect(session.settings.redis_target)
    try:
        report = usage_report(PageUsage(redis_client), first, last, args.client)
    finally:
        redis_client.close()
    print(json.dumps(report))
    return EXIT_OK
