"""A local folder's batch, driven by submit.py itself through the one batch driver.

Runs in submit.py. The batch is recorded in Redis like any batch (`local`: no worker
steps it), so it has an id that `batch status|cancel ID` read; this process steps
its driver (tasks/lifecycle/batches.py) through `LocalPorts`: the folder is the
source, the target a folder, each document admitted by the gate (this client's
rules) and sent by `OcrClient` (its file uploaded as the job's input), its output
written under the target as its job ends. Progress lines (documents done/failed/total,
pages/s) go to stderr: each second on a terminal (or with `--progress`), every
PIPE_SECONDS into a pipe or file. After the summary, `failure_lines` name each document
that failed or was read in part, with its error code, from the target's manifest.
"""

from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from kombu.utils.uuid import uuid

from tasks.client import OcrClient
from tasks.lifecycle.batch_local import LocalFolder, LocalTarget
from tasks.lifecycle.batch_manifest import MANIFEST_FILE
from tasks.lifecycle.batch_sources import Source, Target, output_name
from tasks.lifecycle.batches import BatchDriver
from tasks.lifecycle.fetcher import Fetcher
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.formats import FORMATS
from tasks.records.jobs import Job, Reservation
from tasks.records.request import JobRequest
from tasks.records.status import JobStatus
from tasks.state.batch_store import BatchStore, progress_of

POLL_SECONDS = 0.2     # between two steps
PROGRESS_SECONDS = 1.0  # at most one progress line this often (a terminal, --progress)
PIPE_SECONDS = 5.0      # at most one this often into a pipe or a file
STALLED_SECONDS = 120
WRITERS = 8            # ended documents' outputs fetched and written at once


@dataclass
class Progress:
    """Where progress lines go (stderr), and at most how often a changed one is said."""

    stream: TextIO
    every: float
    _at: float = float("-inf")
    _last: str = ""

    def show(self, shown: dict[str, Any], *, last: bool = False) -> None:
        """Say the batch's progress line when it changed, `every` s at most (`last`: now)."""
        now, line = time.monotonic(), progress_line(shown)
        if line != self._last and (last or now - self._at >= self.every):
            print(line, file=self.stream, flush=True)
            self._at, self._last = now, line


class LocalPorts:
    """The driver's ports in submit.py: a folder in, a folder out, jobs via OcrClient.

    `chosen`: the folder's files it reads (`choose`'s; None: every one). `password`
    opens encrypted PDFs: it goes with each job, never into the batch's record or its
    manifest.
    """

    def __init__(self, client: OcrClient, chosen: frozenset[str] | None = None,
                 password: str | None = None) -> None:
        self.client = client
        self.chosen = chosen
        self.password = password
        self._outputs: dict[str, tuple[str, str]] = {}  # job id -> (name, output)

    def fetcher(self, record: BatchRecord) -> Fetcher:
        """A local folder's documents are files: a URL is this client's settings' to read."""
        return Fetcher.for_client(self.client.settings, None)

    def target(self, record: BatchRecord) -> Target:
        return LocalTarget(Path(record.target))

    def source(self, record: BatchRecord, target: Target) -> Source:
        return LocalFolder(Path(record.source), Path(record.target), self.chosen)

    def admit(self, record: BatchRecord, request: JobRequest) -> Reservation:
        return self.client.admit(self._local(request), priority=record.priority,
                                 job_id=uuid())

    def release(self, reservation: Reservation) -> None:
        return None  # this client's reservations hold no place and no pages

    def send(self, record: BatchRecord, request: JobRequest,
             reservation: Reservation | None = None, replacing: str = "") -> str:
        local = self._local(request)
        path = str(local.path)
        blob = self.client.put_input(path)
        stored = local.stored_as(blob)
        job_id = self.client.enqueue(stored, priority=record.priority) if reservation is None \
            else self.client.enqueue(Job(reservation.job_id,
                                         replace(stored, client=self.client.client),
                                         reservation=reservation))
        name = Path(path).relative_to(record.source).as_posix()  # its name in the batch
        self._outputs[job_id] = (name, local.output)
        return job_id

    def endings(self, record: BatchRecord, job_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Those of `job_ids` that ended, each with its result; their outputs written."""
        ended = self.client.states.ended(job_ids)
        with ThreadPoolExecutor(WRITERS) as pool:
            return dict(zip(ended, pool.map(lambda job_id: self._result(record, job_id),
                                            ended), strict=True))

    def _result(self, record: BatchRecord, job_id: str) -> dict[str, Any]:
        """An ended job's result, its output written under the target folder."""
        reading = self.client.read(job_id)
        result = reading.result
        name, output = self._outputs.pop(job_id, ("", "text"))
        if name and JobStatus.of(result.get("status")).answered and output in FORMATS:
            written = self.target(record).put(output_name(name, output),
                                              self.client.content(reading, output),
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

    def _local(self, request: JobRequest) -> JobRequest:
        """The driver's request as a local job's: its file by path, no result URL."""
        return replace(request, result_url=None, password=self.password or request.password)


def run_local(client: OcrClient, store: BatchStore, source: Path, target_dir: Path,
              options: dict[str, Any], *, overwrite: bool = False,
              retry_failed: bool = False, priority: str = "batch",
              timeout: float | None = None, progress: Progress | None = None,
              chosen: frozenset[str] | None = None, password: str | None = None
              ) -> dict[str, Any]:
    """OCR the files under `source` into `target_dir`; the batch's summary (as shown).

    `chosen`: only those relative paths (None: every file); `password` goes with each
    job (LocalPorts). The batch is recorded (its id printed to `progress` first);
    interrupted, it ends CANCELLED. `timeout`: the summary as it stands then
    (RUNNING), the jobs go on.
    """
    record = store.create(BatchRecord(
        id="", source=str(source.resolve()), target=str(target_dir.resolve()) + "/",
        options=options, priority=priority, client=client.client, local=True,
        overwrite=overwrite, retry_failed=retry_failed))
    chain = store.new_chain(record.id)
    ports = LocalPorts(client, chosen, password)
    driver = BatchDriver(store, ports, client.settings)
    deadline = None if timeout is None else time.monotonic() + timeout
    if progress is not None:
        print(f"batch {record.id}: {source} -> {target_dir}", file=progress.stream,
              flush=True)
    try:
        while driver.step(record.id, chain) is not None:
            if progress is not None:
                progress.show(progress_of(store.get(record.id), store.in_flight(record.id)))
            if deadline is not None and time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        ports.cancel(list(store.flight(record.id)))
        store.end(record.id, BatchState.CANCELLED)
        raise
    shown = progress_of(store.get(record.id), store.in_flight(record.id))
    if progress is not None:
        progress.show(shown, last=True)
    return shown


def progress_line(shown: dict[str, Any]) -> str:
    """One progress line: documents done/failed/total, pages/s."""
    docs = shown["documents"]
    total = "?" if docs["total"] is None else docs["total"]
    return (f"{shown['state'].lower()}: {docs['done']} done, {docs['failed']} failed, "
            f"{docs['skipped']} skipped, {docs['running']} running of {total} "
            f"documents; {shown['pages_per_second']} pages/s")


def progress_stream(forced: bool) -> Progress:
    """Progress on stderr: a line a second on a terminal (or `--progress`), else slower."""
    every = PROGRESS_SECONDS if forced or sys.stderr.isatty() else PIPE_SECONDS
    return Progress(sys.stderr, every)


def failure_lines(target: Target, shown: dict[str, Any], retry: str | None) -> list[str]:
    """A batch's documents that failed or were read in part, each with its code.

    From the target's `manifest.jsonl` (complete once the batch ended); then, when
    documents were skipped because they had failed before, `retry`: how to read them
    again (None: they were).
    """
    raw = (target.get(MANIFEST_FILE) or b"").decode("utf-8").splitlines()
    lines = []
    for text in raw:
        line = json.loads(text)
        status = line.get("status")
        if status == JobStatus.FAILURE:
            lines.append(f"{line.get('name')}: FAILURE {line.get('error') or 'failed'}")
        elif status == JobStatus.PARTIAL:
            lines.append(f"{line.get('name')}: PARTIAL {line.get('pages_failed')} of "
                         f"{line.get('pages')} pages failed")
    skipped = shown["documents"]["skipped_failed"]
    if skipped and retry is not None:
        lines.append(f"{skipped} of the skipped had failed before; {retry}")
    return lines
