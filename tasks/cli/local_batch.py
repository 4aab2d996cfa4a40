"""A local folder's batch, driven by submit.py itself through the one batch driver.

Runs in submit.py. The batch is recorded in Redis like any batch (`local`: no worker
steps it), so it has an id that `batch status|cancel ID` read; this process steps
its driver (tasks/lifecycle/batches.py) through `LocalPorts`: the folder is the
source, the target a folder, each document admitted by the gate (this client's
rules) and sent by `OcrClient` (its file uploaded as the job's input), its output
written under the target as its job ends. Progress lines (documents done/failed/total,
pages/s) go to stderr on a terminal, or with `--progress`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

from tasks.client import OcrClient
from tasks.lifecycle.batch_local import LocalFolder, LocalTarget
from tasks.lifecycle.batch_sources import Source, Target, output_name
from tasks.lifecycle.batches import BatchDriver
from tasks.lifecycle.url_inputs import result_content
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.formats import FORMATS
from tasks.records.status import JobStatus
from tasks.state.batch_store import BatchStore, progress_of

POLL_SECONDS = 0.2     # between two steps
PROGRESS_SECONDS = 1.0  # at most one progress line this often
STALLED_SECONDS = 120


class LocalPorts:
    """The driver's ports in submit.py: a folder in, a folder out, jobs via OcrClient."""

    def __init__(self, client: OcrClient) -> None:
        self.client = client
        self._outputs: dict[str, tuple[str, str]] = {}  # job id -> (name, output)

    def target(self, record: BatchRecord) -> Target:
        return LocalTarget(Path(record.target))

    def source(self, record: BatchRecord, target: Target) -> Source:
        return LocalFolder(Path(record.source), Path(record.target))

    def admit(self, record: BatchRecord, kwargs: dict[str, Any]) -> None:
        self.client.admit(_job_options(kwargs), priority=record.priority)

    def send(self, record: BatchRecord, kwargs: dict[str, Any]) -> str:
        options = _job_options(kwargs)
        path = str(options.pop("path"))
        blob = self.client.put_input(path)
        job_id = self.client.enqueue({**options, "blob": blob}, priority=record.priority)
        name = Path(path).relative_to(record.source).as_posix()  # its name in the batch
        self._outputs[job_id] = (name, str(options.get("output", "text")))
        return job_id

    def ended(self, job_ids: list[str]) -> list[str]:
        return self.client.states.ended(job_ids)

    def result(self, record: BatchRecord, job_id: str) -> dict[str, Any]:
        result = self.client.result(job_id)
        name, output = self._outputs.pop(job_id, ("", "text"))
        if name and JobStatus.of(result.get("status")).answered and output in FORMATS:
            stored = self.client.fetch_output(result) if FORMATS[output].stored else None
            written = self.target(record).put(output_name(name, output),
                                              result_content(result, output, stored),
                                              FORMATS[output].media_type)
            result["result_object"] = {"url": written}
        return result

    def cancel(self, job_ids: list[str]) -> None:
        self.client.cancel(job_ids, wait=0.0)

    def notify(self, record: BatchRecord, body: dict[str, Any]) -> None:
        return None  # a local batch names no callback

    def stalled(self, job_ids: list[str]) -> list[str]:
        return self.client.sender.stalled(job_ids, STALLED_SECONDS)

    def forget(self, job_ids: list[str]) -> None:
        return None  # their records expire as any job's


def _job_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The driver's kwargs as a local job's: its file by path, no result URL."""
    return {k: v for k, v in kwargs.items() if k != "result_url"}


def run_local(client: OcrClient, store: BatchStore, source: Path, target_dir: Path,
              options: dict[str, Any], *, overwrite: bool = False,
              retry_failed: bool = False, priority: str = "batch",
              timeout: float | None = None, progress: TextIO | None = None
              ) -> dict[str, Any]:
    """OCR every file under `source` into `target_dir`; the batch's summary (as shown).

    The batch is recorded (its id printed to `progress` first); interrupted, it ends
    CANCELLED. `timeout`: the summary as it stands then (RUNNING), the jobs go on.
    """
    record = store.create(BatchRecord(
        id="", source=str(source.resolve()), target=str(target_dir.resolve()) + "/",
        options=options, priority=priority, client=client.client, local=True,
        overwrite=overwrite, retry_failed=retry_failed))
    chain = store.new_chain(record.id)
    ports = LocalPorts(client)
    driver = BatchDriver(store, ports, client.settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    if progress is not None:
        print(f"batch {record.id}: {source} -> {target_dir}", file=progress, flush=True)
    shown_at, last = 0.0, ""
    try:
        while driver.step(record.id, chain) is not None:
            now = time.monotonic()
            if progress is not None and now - shown_at >= PROGRESS_SECONDS:
                line = progress_line(progress_of(store.get(record.id),
                                                 store.in_flight(record.id)))
                if line != last:
                    print(line, file=progress, flush=True)
                    shown_at, last = now, line
            if deadline is not None and now > deadline:
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        ports.cancel(list(store.flight(record.id)))
        store.end(record.id, BatchState.CANCELLED)
        raise
    shown = progress_of(store.get(record.id), store.in_flight(record.id))
    if progress is not None and progress_line(shown) != last:
        print(progress_line(shown), file=progress, flush=True)
    return shown


def progress_line(shown: dict[str, Any]) -> str:
    """One progress line: documents done/failed/total, pages/s."""
    docs = shown["documents"]
    total = "?" if docs["total"] is None else docs["total"]
    return (f"{shown['state'].lower()}: {docs['done']} done, {docs['failed']} failed, "
            f"{docs['skipped']} skipped, {docs['running']} running of {total} "
            f"documents; {shown['pages_per_second']} pages/s")


def progress_stream(forced: bool) -> TextIO | None:
    """The stream progress lines go to: stderr on a terminal (or `--progress`), else None."""
    return sys.stderr if forced or sys.stderr.isatty() else None
