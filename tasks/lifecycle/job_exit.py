"""The one exit of every job: whatever ended it, one function finishes it, once.

Success, failure, partial, cancel, deadline, poison, hard kill or an unexpected
exception: each path builds an `Outcome` and calls `JobEnder.end()` (or `claim()` then
`finish()` where the right to end must be taken before the work that builds the
outcome, as when the last page of a PDF merges). `finish` stores the result with its
callbacks (the callback outbox, tasks/state/callback_outbox.py: the control worker sends
them), writes the `ocr.job` line and counters, and frees the input and the join.
The step that marks the ending done also takes the job out of its client's jobs in
flight (tasks/state/client_rules.py), whatever its status: its place is free once it
ends, whatever becomes of its result.

The claim (`ocr:job:<id>:ended`, SET NX) makes the second ender a no-op, so a page
delivered twice, a cancel racing the merge, or the worker parent's view of a kill never
end a job twice. The claim names its holder (`<host>:<pid>`) until `finish` is done: a
holder killed halfway (a cancel's SIGKILL that reached the child ending the job) is
taken over by the worker parent that killed it (`take_over`), which finishes the ending;
one that died with its whole worker, by the redelivered message of its job or page
(`take_over_abandoned`; tasks/lifecycle/claim_holders.py tells a dead holder).

No Celery here: storing and events go through `EndingPorts`, which the queue layer
implements. Runs in worker pool children and in the worker parent.
"""

from __future__ import annotations

import json
import logging
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Protocol

from tasks import tracing
from tasks.errors import OcrError
from tasks.lifecycle.callbacks import deliveries
from tasks.lifecycle.claim_holders import dead_local_holder, holder_name
from tasks.records.jobs import job_summary
from tasks.state.boundary import CONNECTION_ERRORS
from tasks.state.job_control import EndMark
from tasks.state.keys import sealed_key
from tasks.state.stores import blob_keys

if TYPE_CHECKING:
    from tasks.records.jobs import Broadcast, Outcome, ResultRecord
    from tasks.state.callback_outbox import Delivery
    from tasks.state.job_control import CarriedWrites, JobControl
    from tasks.state.join import DocumentJoin

log = logging.getLogger(__name__)
# What storing a result raises when its store is unreachable (or refuses it).
_STORE_ERRORS: tuple[type[BaseException], ...] = (OcrError, *CONNECTION_ERRORS)


class EndingPorts(Protocol):
    """What ending a job needs from the queue layer."""

    def result_record(self, outcome: Outcome) -> ResultRecord | None:
        """The result record of an ending the end claim stores in its own step.

        None: `publish` stores the result (an ending whose stored form needs more).
        """

    def publish(self, outcome: Outcome) -> None:
        """Store the result where clients read it and tell monitors (Flower)."""

    def tell(self, outcome: Outcome) -> None:
        """Tell monitors (Flower) of an ending whose `result_record` the claim stored."""

    def told_by_claim(self, outcome: Outcome) -> Broadcast | None:
        """`tell`'s message, for the claim's step to publish with the result record.

        None: `tell` sends it after the claim (the monitors' channel is not on the
        state store's server, or not always published).
        """

    def waits_for_replicas(self) -> bool:
        """Whether `keep` holds for Redis replicas (nothing else then follows the claim)."""

    def keep(self, outcome: Outcome) -> None:
        """Hold until the stored ending is on enough Redis replicas to outlive a failover."""

    def record(self, outcome: Outcome) -> None:
        """Write the `ocr.job` log line and count the job."""


class JobEnder:
    """Ends jobs exactly once; one per process, built with that process's stores."""

    def __init__(self, control: JobControl, join: DocumentJoin, ports: EndingPorts) -> None:
        self._control = control
        self._join = join
        self._ports = ports

    def claim(self, job_id: str) -> bool:
        """Take the right to end `job_id`; False when another path already has it."""
        return self._control.claim_end(job_id, holder_name())

    def take_over(self, job_id: str, holder: str) -> bool:
        """Take the claim from `holder`, a process the caller knows is dead.

        False (nothing done) when the claim names another holder, or none: its ending
        finished, or another process took it over first.
        """
        if self._control.end_holder(job_id) != holder:
            return False
        return self._control.take_over_end(job_id, holder, holder_name())

    def take_over_abandoned(self, job_id: str) -> str | None:
        """Take the claim of an ender that died with its whole worker; its name, or None.

        Only a holder of this host whose process is gone is taken over (one taker
        wins); None when the claim names a live process, another host, or no one.
        """
        holder = self._control.end_holder(job_id)
        if holder is None or not dead_local_holder(holder):
            return None
        return holder if self._control.take_over_end(job_id, holder, holder_name()) else None

    def release(self, job_id: str) -> None:
        """Give the claim back (the work that was to end the job will be retried)."""
        self._control.release_end(job_id)

    def has_ended(self, job_id: str) -> bool:
        return self._control.has_ended(job_id)

    def announce(self, outcome: Outcome) -> None:
        """Show a result before the job is ended (a cancel met before its message)."""
        self._ports.publish(outcome)

    def end(self, outcome: Outcome, carried: CarriedWrites | None = None) -> bool:
        """Claim and finish; False (and nothing done) when the job had already ended.

        Where the ports give the result's record, the claim stores it and the job's
        callbacks in its own atomic step; where nothing has to happen between the two
        (no callback, no replica to wait for), that step finishes the ending too (freed,
        marked done, the notice), and publishes the monitors' event where the ports hand it over
        (`told_by_claim`): a job's whole ending in one round trip. The `carried` writes
        (what the job read: `CarriedWrites`) go in that round trip, before
        the claim.
        """
        job_id = outcome.job_id
        with _ending_span(outcome):
            record = self._ports.result_record(outcome)
            told = None if record is None else self._ports.told_by_claim(outcome)
            done = record is not None and not self._steps_between(outcome)
            callbacks = self._callbacks(outcome) if record is not None else []
            holder = holder_name()
            try:
                with tracing.span("ocr.result.write"):
                    claimed = self._control.claim_end(
                        job_id, holder, record, ended=outcome.status.value if done else "",
                        freed=self._freed(outcome) if done else (), carried=carried,
                        told=told, client=outcome.client, callbacks=callbacks,
                        summary=_summary(outcome, record))
            except _STORE_ERRORS:
                if record is not None:  # it may have run: only a claim naming this ender
                    self._give_back(job_id, holder)
                raise
            if not claimed:
                # e.g. a run by a worker that only seemed dead, its job handed on meanwhile
                log.warning("job %s already ended; this run's %s dropped", job_id,
                            outcome.status.value)
                return False
            if record is None:
                self._finish(outcome)
            else:
                if told is None:
                    self._ports.tell(outcome)
                self._after_storing(outcome, marked=done, summarized=True)
        return True

    def finish(self, outcome: Outcome) -> None:
        """End a job whose claim the caller holds.

        Storing the result, then its callbacks, comes first and may raise: the claim
        is then given back (the caller retries, and its retry can claim again: a claim
        kept across a Redis restart would end no one); what follows never raises for a
        store being briefly unreachable. A stored ending it may have lost with a
        failover (`keep`) gives the claim back and raises, as a failed store does.
        Traced where the job is (`ocr.job.end`, and `ocr.result.write` for its
        result): the trace id goes into its result.
        """
        with _ending_span(outcome):
            self._finish(outcome)

    def _finish(self, outcome: Outcome) -> None:
        """`finish`, inside its span."""
        try:
            with tracing.span("ocr.result.write"):
                self._ports.publish(outcome)
                self._control.put_callbacks(self._callbacks(outcome))
        except _STORE_ERRORS:
            self._give_back(outcome.job_id)
            raise
        self._after_storing(outcome, marked=False, summarized=False)

    def _steps_between(self, outcome: Outcome) -> bool:
        """Whether the ending's notice must wait: for replicas, or for a job with callbacks.

        A job with callbacks keeps its claim naming its holder until its `ocr.job` line
        is written: a host killed before that leaves the ending to the job's redelivery
        (`take_over_abandoned`), which finishes it; its callbacks, written again, are
        the same deliveries.
        """
        request = outcome.request
        return self._ports.waits_for_replicas() or (request is not None and bool(
            request.callback_task or request.callback_url))

    def _callbacks(self, outcome: Outcome) -> list[Delivery]:
        """The ending's callbacks for the outbox (the owner read from the job's record)."""
        request = outcome.request
        if request is None or not (request.callback_task or request.callback_url):
            return []
        owner = self._control.owner(outcome.job_id) if request.callback_url else ""
        return deliveries(outcome, owner)

    def _after_storing(self, outcome: Outcome, *, marked: bool, summarized: bool) -> None:
        """What follows the stored result and callbacks: replicas, the record, the notice.

        `marked`: the claim's own step already freed the job and wrote its notice;
        `summarized`: it stored the job's summary (else the step marking it done does).
        A stored ending a failover may have taken (`keep` raises: written to a primary
        that was replaced before a replica had it) gives its claim back before anything
        is told, and the caller's retry ends the job again: a claim left behind would
        have its retry and every redelivery ignored as ended, and the job never end.
        """
        try:
            self._ports.keep(outcome)
        except _STORE_ERRORS:
            self._give_back(outcome.job_id, holder_name())
            raise
        self._ports.record(outcome)
        if marked:
            return
        try:
            self._close(outcome, "" if summarized else _summary(outcome, None))
        except _STORE_ERRORS as exc:
            # Unreachable store: the keys expire with their TTL, the claim keeps naming
            # this process.
            log.warning("job %s ended, its state not freed nor its claim marked done: %s",
                        outcome.job_id, exc)

    def _close(self, outcome: Outcome, summary: str) -> None:
        """Mark the ending done; an ending a failover took from the server is written again.

        One atomic step: the join's keys and the inputs freed, the claim marked done,
        and the notice waiting clients block on, only while the claim names this ender;
        the job's `summary` is stored in that step where the claim's did not store it.
        Where the server holds no claim, the claim's step went to a primary lost before
        its replicas had it (`keep` gave up waiting first): the job's message, restored,
        would run it again, or fail on the input freed here. Its claim, result and
        callbacks are written again instead (the same deliveries: sent once), so that
        the ending stands and the redelivery is ignored. A claim another run took
        meanwhile is left to that run.
        """
        job_id, status, holder = outcome.job_id, outcome.status.value, holder_name()
        freed = self._freed(outcome)
        client = outcome.client
        mark = self._control.mark_ended(job_id, holder, status, freed=freed, client=client,
                                        summary=summary)
        if mark is EndMark.ELSEWHERE:
            log.warning("job %s: its end claim names another holder; its ending is left "
                        "to it", job_id)
        if mark is not EndMark.LOST:
            return
        log.warning("job %s: its stored ending was lost with a failover; written again",
                    job_id)
        record = self._ports.result_record(outcome)
        summary = _summary(outcome, record)
        if record is not None:
            self._control.claim_end(job_id, holder, record, ended=status, freed=freed,
                                    client=client, callbacks=self._callbacks(outcome),
                                    summary=summary)
        elif self._control.claim_end(job_id, holder):
            try:
                self._ports.publish(outcome)
                self._control.put_callbacks(self._callbacks(outcome))
            except _STORE_ERRORS:
                self._give_back(job_id, holder)
                raise
            self._control.mark_ended(job_id, holder, status, freed=freed, client=client,
                                     summary=summary)

    def _give_back(self, job_id: str, holder: str | None = None) -> None:
        """Release the claim of an ending that failed to store its result.

        With `holder`, only while the claim names it (the step that failed may not
        have taken it, or may have finished the ending).
        """
        try:
            self._control.release_end(job_id, holder)
        except OcrError as exc:  # still unreachable: the claim waits for its TTL
            log.error("job %s: its ending failed and its claim was not given back: %s",
                      job_id, exc)

    def _freed(self, outcome: Outcome) -> list[str]:
        """What an ending deletes: join keys, sealed arguments, inputs (unless kept)."""
        blobs = list(outcome.extra_blobs)
        sealed = []
        if outcome.request is not None and outcome.request.blob:
            blobs.append(outcome.request.blob)
        if outcome.request is not None and outcome.request.sealed:
            sealed.append(sealed_key(outcome.request.sealed))
        return [*self._join.keys(outcome.job_id,
                                 () if outcome.keeps_input else blob_keys(blobs)), *sealed]


def _summary(outcome: Outcome, record: ResultRecord | None) -> str:
    """The job's summary as stored beside its result (`job_summary`), in JSON."""
    public = outcome.public()
    stored = len(record.text) if record is not None else len(json.dumps(public, default=str))
    return json.dumps(job_summary(public, stored), default=str)


def _ending_span(outcome: Outcome) -> AbstractContextManager[Any]:
    """The ending's span (`ocr.job.end`); the trace id goes into its result."""
    outcome.trace_id = outcome.trace_id or tracing.current_trace_id()
    return tracing.span("ocr.job.end", {"ocr.job_id": outcome.job_id,
                                        "ocr.status": outcome.status.value})
