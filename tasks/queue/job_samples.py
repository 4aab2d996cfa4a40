"""What an ended job and its pages record: the `ocr.job` line and the metric samples.

Pure: built from a job's result (or the error it failed with) and its pages' records,
by tasks/queue/telemetry.py in whichever worker process ended the job or read the page.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tasks.error_codes import error_info
from tasks.records.jobs import JobStatus
from tasks.state.client_labels import ANONYMOUS_LABEL
from tasks.state.metrics import Sample


def job_line(record: dict[str, Any]) -> str:
    """The log line of one finished job: `ocr.job` and the record as one JSON object."""
    return "ocr.job " + json.dumps(record, ensure_ascii=False, separators=(", ", ": "))


def job_record(job_id: str, node: str, filename: str, engine: str,
               seconds: float | None, outcome: Any, client: str = "",
               client_label: str = ANONYMOUS_LABEL,
               trace_id: str | None = None) -> tuple[dict[str, Any], list[Sample]]:
    """The log record and counter samples of a job that ended with `outcome`.

    `outcome` is the job's result dict, the exception it failed with, or a final status
    of its own (`CANCELLED`). `client` is who sent it ("" anonymous), as the line names
    it; `client_label` the bounded label its counter is kept under
    (tasks/state/client_labels.py). `trace_id`: the job's trace, where it was traced.
    """
    record: dict[str, Any] = {"id": job_id, "node": node, "client": client,
                              "filename": filename, "pages": None, "engine": engine,
                              "seconds": seconds}
    if trace_id:
        record["trace_id"] = trace_id
    if isinstance(outcome, dict):
        status = str(outcome.get("status", JobStatus.SUCCESS.value))
        pages = outcome.get("pages") or []
        record["pages"] = len(pages)
        record["engine"] = (outcome.get("engine") or {}).get("name") or engine
        if (outcome.get("engine") or {}).get("names"):  # pages read by several
            record["engines"] = list(outcome["engine"]["names"])
        record.update(outcome=status, code=None, cached=bool(outcome.get("cached")))
        if outcome.get("failed_pages"):
            record["failed_pages"] = len(outcome["failed_pages"])
    elif isinstance(outcome, str):
        status = outcome
        record.update(outcome=status, code=None, cached=False)
    else:
        status = JobStatus.FAILURE.value
        record.update(outcome=status, code=error_info(outcome)["code"], cached=False)
    engine_label = {"engine": str(record["engine"])}
    samples: list[Sample] = [
        ("ocr_jobs_total", {**engine_label, "outcome": status}, 1.0),
        ("ocr_job_seconds_total", {**engine_label, "outcome": status}, float(seconds or 0)),
        ("ocr_client_jobs_total", {"client": client_label, "outcome": status}, 1.0),
    ]
    if record["code"]:
        samples.append(("ocr_job_failures_total", {**engine_label, "code": record["code"]},
                        1.0))
    if isinstance(outcome, dict) and not outcome.get("cached"):
        vlm, _ = vlm_record(outcome.get("pages") or [], engine_label)
        if vlm:
            record["vlm"] = vlm
    # Its pages were counted where they were read (`page_samples`).
    return record, samples


def page_samples(engine: str, pages: Iterable[dict[str, Any]],
                 cached: bool = False) -> list[Sample]:
    """Counter samples of pages one process read (or answered from the cache).

    `pages` are page records as JSON. Per source (`ocr`, `text-layer`, `blank`,
    `failed`, or `cached` for a cached job's), and for the pages a VLM read, their
    tokens, finish reasons and fallbacks.
    """
    pages = list(pages)
    label = {"engine": engine}
    sources: dict[str, int] = {}
    for page in pages:
        source = ("cached" if cached else
                  "failed" if page.get("error") is not None else str(page.get("source", "ocr")))
        sources[source] = sources.get(source, 0) + 1
    samples: list[Sample] = [("ocr_pages_total", {**label, "source": source}, float(count))
                             for source, count in sorted(sources.items())]
    if not cached:
        samples += vlm_record(pages, label)[1]
    return samples


def client_page_samples(client_label: str, engine: str, pages: Iterable[dict[str, Any]],
                        cached: bool = False) -> list[Sample]:
    """`ocr_client_pages_total` samples: pages by client label, engine and outcome.

    Outcome `read` (OCR, text layer, blank), `failed`, or `cached` (a cached job's).
    """
    outcomes: dict[str, int] = {}
    for page in pages:
        outcome = "cached" if cached else "failed" if page.get("error") is not None else "read"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return [("ocr_client_pages_total",
             {"client": client_label, "engine": engine, "outcome": outcome}, float(count))
            for outcome, count in sorted(outcomes.items())]


def escalation_samples(pages: Iterable[dict[str, Any]]) -> list[Sample]:
    """`ocr_pages_escalated_total` samples of the pages among `pages` that escalated."""
    counts: dict[tuple[str, str, str], int] = {}
    for page in pages:
        escalation = page.get("escalation")
        if isinstance(escalation, dict):
            key = (str(escalation.get("from")), str(escalation.get("to")),
                   str(escalation.get("reason")))
            counts[key] = counts.get(key, 0) + 1
    return [("ocr_pages_escalated_total", {"from": source, "to": to, "reason": reason},
             float(count)) for (source, to, reason), count in sorted(counts.items())]


def page_failures(engine: str, pages: Iterable[dict[str, Any]]) -> list[Sample]:
    """`ocr_page_failures_total` samples of the failed pages among `pages`, by code."""
    codes: dict[str, int] = {}
    for page in pages:
        if isinstance(page.get("error"), dict):
            code = str(page["error"].get("code") or "internal")
            codes[code] = codes.get(code, 0) + 1
    return [("ocr_page_failures_total", {"engine": engine, "code": code}, float(count))
            for code, count in sorted(codes.items())]


def page_latencies(engine: str, pages: Iterable[dict[str, Any]]) -> list[Sample]:
    """`ocr_page_latency_seconds` observations of the pages an engine read (JSON records).

    Each OCR page that was read (not failed), labelled with the engine that read it.
    """
    return [("ocr_page_latency_seconds", {"engine": str(page.get("engine") or engine)},
             float(page["seconds"])) for page in pages
            if page.get("source", "ocr") == "ocr" and page.get("error") is None
            and isinstance(page.get("seconds"), int | float)]


def vlm_record(pages: list[dict[str, Any]], engine_label: dict[str, str]
               ) -> tuple[dict[str, Any], list[Sample]]:
    """Token counts, finish reasons and fallbacks of the pages a VLM read."""
    reads = [p for p in pages if isinstance(p.get("vlm"), dict)]
    if not reads:
        return {}, []
    prompt = sum(int(p["vlm"].get("prompt_tokens", 0)) for p in reads)
    generated = sum(int(p["vlm"].get("generation_tokens", 0)) for p in reads)
    reasons: dict[str, int] = {}
    fallbacks: dict[tuple[str, str], int] = {}
    for page in reads:
        reason = str(page["vlm"].get("finish_reason"))
        reasons[reason] = reasons.get(reason, 0) + 1
        if isinstance(page.get("fallback"), dict):
            key = (str(page["fallback"].get("engine")), str(page["fallback"].get("reason")))
            fallbacks[key] = fallbacks.get(key, 0) + 1
    record = {"prompt_tokens": prompt, "generation_tokens": generated,
              "finish_reasons": dict(sorted(reasons.items())),
              "fallbacks": sum(fallbacks.values())}
    samples: list[Sample] = [
        ("ocr_vlm_tokens_total", {**engine_label, "kind": "prompt"}, float(prompt)),
        ("ocr_vlm_tokens_total", {**engine_label, "kind": "generation"}, float(generated)),
    ]
    samples += [("ocr_vlm_pages_total", {**engine_label, "finish_reason": r}, float(n))
                for r, n in sorted(reasons.items())]
    samples += [("ocr_vlm_fallbacks_total", {**engine_label, "fallback": fb, "reason": r},
                 float(n)) for (fb, r), n in sorted(fallbacks.items())]
    return record, samples
