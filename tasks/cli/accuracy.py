"""`ocr_admin.py accuracy [--run]`: the golden set's scores, and a run now.

Runs in the operator's process. Without `--run` it prints the history the golden-set
runs left in Redis (tasks/state/golden.py), newest first: per run and engine, its
model, release, CER, WER, the share of pages escalated (a run with escalation on),
documents and characters (`--json`: one record a line); an empty history is one line
on stderr that says how to make a first run.
`--run` sends OCR_GOLDEN_SET (the operator's setting, as beat's audit reads it) to
every engine the live workers serve (tasks/queue/golden.py), waits for the jobs and
for their scores to be recorded, and prints the run's records.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Protocol

from tasks.admission import admit
from tasks.cli.core import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from tasks.client import OcrClient
from tasks.errors import OcrError
from tasks.settings import Settings
from tasks.state.connection import connect
from tasks.state.golden import GoldenStore

ACCURACY_SUMMARY = ("the golden set's scores per engine, model and release, newest "
                    "first; --run scores OCR_GOLDEN_SET now")
RECORDED = 60.0  # seconds for the last callbacks to be recorded once the jobs ended


class Context(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def client(self) -> OcrClient: ...


def add_accuracy_command(commands: Any) -> None:
    """The `accuracy` subcommand of ocr_admin.py."""
    accuracy = commands.add_parser("accuracy", help=ACCURACY_SUMMARY,
                                   description=ACCURACY_SUMMARY)
    accuracy.add_argument("--run", action="store_true",
                          help="send OCR_GOLDEN_SET to every engine served and wait for "
                               "its scores")
    accuracy.add_argument("--json", action="store_true", help="one JSON record a line")
    accuracy.add_argument("--timeout", type=float, default=3600.0, metavar="S",
                          help="--run: stop waiting after S seconds (default 3600)")


def _line(record: dict[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(float(record["finished"])))
    return (f"{when}\t{record['engine']}\t{record['model'] or '-'}\t{record['release']}\t"
            f"CER {float(record['cer']):.2%}\tWER {float(record['wer']):.2%}\t"
            + (f"escalated {float(record['escalated_share']):.2%} to {record['escalate']}\t"
               if record.get("escalate") else "")
            + f"{record['documents']} documents\t{record['chars']} chars"
            + (f"\t{record['failed']} failed" if record.get("failed") else ""))


def run_accuracy(args: argparse.Namespace, session: Context,
                 prog: str = "ocr_admin.py") -> int:
    store = GoldenStore(connect(session.settings.redis_target))
    records = store.history()
    if args.run:
        if not session.settings.golden_set:
            print(f"{prog}: OCR_GOLDEN_SET is not set: no golden set to score",
                  file=sys.stderr)
            return EXIT_USAGE
        from tasks.queue.golden import send_run  # the task module: only when it sends

        client = session.client
        try:
            sent = send_run(session.settings, client.sender, client.put_input,
                            client.live_queues(), admit)
        except OcrError as exc:
            print(f"{prog}: {exc.code}: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
        if not sent["engines"]:
            print(f"{prog}: no live worker serves an engine's queue", file=sys.stderr)
            return EXIT_FAILURE
        ids = [job for jobs in sent["jobs"].values() for job in jobs]
        client.wait(ids, timeout=args.timeout)
        deadline = time.monotonic() + RECORDED
        while True:
            records = [r for r in store.history() if r["run"] == sent["run"]]
            if len(records) == len(sent["engines"]) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if len(records) < len(sent["engines"]):
            print(f"{prog}: run {sent['run']}: the scores of "
                  f"{len(sent['engines']) - len(records)} engine(s) were not recorded",
                  file=sys.stderr)
            return EXIT_FAILURE
    if not records:  # stdout stays empty: one line on stderr says why and what to do
        print(no_history(prog, bool(session.settings.golden_set)), file=sys.stderr)
    for record in records:
        print(json.dumps(record) if args.json else _line(record), flush=True)
    return EXIT_OK


def no_history(prog: str, has_set: bool) -> str:
    """The line said for an empty history: how a first run is made."""
    first = (f"`{prog} accuracy --run` scores OCR_GOLDEN_SET now, and beat's audit "
             "(OCR_AUDIT_CRONTAB) on its schedule" if has_set else
             "set OCR_GOLDEN_SET to a folder of documents with ground truth (as for "
             f"`submit.py eval`), then run `{prog} accuracy --run` (docs/accuracy.md)")
    return f"{prog}: no golden-set runs recorded yet: {first}"
