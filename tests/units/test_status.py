"""Job status has one owner, tasks/records/status.py.

The translation from Celery's states, the typed `DocumentResult.status`, and the public
JSON that keeps its plain strings.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tasks.records.batches import BatchState
from tasks.records.results import DocumentResult, PageRecord
from tasks.records.status import (
    CeleryState,
    JobStatus,
    ShownState,
    WaitStatus,
    celery_final,
    from_celery,
)


@pytest.mark.parametrize(("state", "seen"), [
    ("PENDING", WaitStatus.QUEUED), ("RECEIVED", WaitStatus.QUEUED),
    ("STARTED", WaitStatus.RUNNING), ("PROGRESS", WaitStatus.RUNNING),
    ("RETRY", WaitStatus.RUNNING), ("SOME-NEW-STATE", WaitStatus.RUNNING),
    ("SUCCESS", JobStatus.SUCCESS), ("FAILURE", JobStatus.FAILURE),
    ("REVOKED", JobStatus.CANCELLED)])
def test_one_translation_from_celery(state: str, seen: JobStatus | WaitStatus) -> None:
    assert from_celery(state) is seen
    assert celery_final(state) is isinstance(seen, JobStatus)


def test_celery_states_are_celerys() -> None:
    from celery import states

    for state in CeleryState:
        if state is not CeleryState.PROGRESS:  # the service's own
            assert getattr(states, state.name) == state.value


def test_a_stored_status_reads_back_typed_and_unknown_ones_as_failure() -> None:
    assert JobStatus.of("PARTIAL") is JobStatus.PARTIAL
    assert JobStatus.of("RUNNING") is JobStatus.FAILURE and JobStatus.of(None) is JobStatus.FAILURE
    assert [s for s in JobStatus if s.answered] == [JobStatus.SUCCESS, JobStatus.PARTIAL]


def test_document_result_status_is_typed_and_its_json_a_plain_string() -> None:
    result = DocumentResult(status=JobStatus.PARTIAL, pages=[PageRecord(1, "a")], id="j")
    data = json.loads(json.dumps(result.to_json()))
    assert data["status"] == "PARTIAL" and type(result.to_json()["status"]) is str
    back = DocumentResult.from_json(data)
    assert back.status is JobStatus.PARTIAL and back.to_json() == result.to_json()
    base = DocumentResult(status=None, filename="x.pdf")  # a document's base, not yet read
    assert DocumentResult.from_json(base.to_json()).status is None


@pytest.mark.parametrize(("state", "expired", "shown"), [
    ("REVOKED", False, ShownState.CANCELLED), ("REVOKED", True, ShownState.FAILURE),
    ("PENDING", False, ShownState.PENDING), ("PROGRESS", False, ShownState.PROGRESS),
    ("SUCCESS", False, ShownState.SUCCESS), ("SOME-NEW-STATE", False, ShownState.STARTED)])
def test_a_shown_state_is_never_celerys_revoked(state: str, expired: bool,
                                                shown: ShownState) -> None:
    """A job's `state` beside its status: REVOKED is CANCELLED, or FAILURE."""
    assert ShownState.of(state, expired) is shown
    assert "REVOKED" not in set(ShownState)
    assert from_celery(shown) is (JobStatus.FAILURE if expired else from_celery(state))
    assert celery_final(shown) is celery_final(state)


def test_status_names_are_spelled_only_in_the_records() -> None:
    """A job's, a wait's, a batch's or Celery's status is named through its enum.

    Outside tasks/records/ no string constant in tasks/ spells one: a new status, or a
    renamed one, is changed in one place.
    """
    names = {s.value for enum in (JobStatus, WaitStatus, CeleryState, ShownState, BatchState)
             for s in enum}
    root = Path(__file__).resolve().parents[2] / "tasks"
    found = []
    for path in sorted(root.rglob("*.py")):
        if "records" in path.relative_to(root).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{path.relative_to(root.parent)}:{node.lineno} {node.value!r}")
    assert not found, found
