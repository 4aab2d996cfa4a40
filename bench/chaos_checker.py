"""The chaos soak's checker: every promise held over the recorded history, or why not.

Runs in the soak's process once the load has drained (bench/chaos.py). Each promise is
`{"held": bool, ...figures and the first offenders}`:

- `one_ending`: every accepted job ended (SUCCESS, PARTIAL, FAILURE or CANCELLED), and
  all its callbacks name one ending (one event id, the status its API reports).
- `callbacks_delivered`: every ending's callback reached the receiver with a valid
  signature; a duplicate carries the same event id.
- `pages_once_and_read`: each page once in its result, the pages the input has; each
  page read is within the engine's CER of a direct read (tesseract, the text layer) or
  is the simulated server's own text (vlm-api); a failed page carries a code.
- `failures_coded`: a failed job or page carries a stable code, never `internal_error`.
- `outputs_rendered`: a pdf, hOCR or Markdown job's own format could be fetched.
- `events_end`: a job followed by its Server-Sent Events (on either API process, the
  stream opened again when a fault cut it) got an `end` event with its final status.
- `keys_expire`: every `ocr:` key has a TTL except a client's own (docs:
  tasks/state/keys.py), Celery's results have one, and no job's input (blob) outlives
  the job's ending (a PARTIAL job's, which `retry` reads, excepted).
- `worker_memory_bounded`: no worker process grew past WORKER_RSS_LIMIT_MB.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from bench.chaos_fleet import SIMULATED_TEXT
from devkit.cer import cer
from tasks.broker.layout import HELD_LISTS_KEY, LAYOUT_KEY, SWEEP_LOCK_KEY, UNACKED_MUTEX_KEY

if TYPE_CHECKING:
    import redis

    from bench.chaos_fleet import Delivery, Fleet
    from bench.chaos_history import Input, Job

# Same engine, same bytes, same settings: a page should read as it does directly; the
# bound absorbs what a different tesseract instance may break ties on.
ENGINE_CER = {"tesseract": 0.02, "text-layer": 0.0, "vlm-api": 0.0}
WORKER_RSS_LIMIT_MB = 1500.0
# A client's own keys live as long as the client (tasks/state/keys.py): its token, its
# record, its webhook signing secrets and its weight; the broker's lanes live like its
# queues (tasks/broker/lanes.py), and its key layout's version and the set of lists
# with unacked records like the broker itself (tasks/broker/stored_layout.py, unacked.py).
NO_TTL = ("ocr:api:token:", "ocr:api:clients", "ocr:api:webhook:", "ocr:lane-weights",
          LAYOUT_KEY, HELD_LISTS_KEY)


def check(jobs: list[Job], inputs: dict[str, Input], deliveries: list[Delivery],
          store: redis.Redis, rss: dict[str, float], fleet: Fleet) -> dict[str, Any]:
    accepted = [j for j in jobs if j.job_id]
    by_job: dict[str, list[Delivery]] = {}
    for delivery in deliveries:
        by_job.setdefault(delivery.job_id, []).append(delivery)
    return {
        "one_ending": _one_ending(accepted, by_job),
        "callbacks_delivered": _callbacks(accepted, by_job),
        "pages_once_and_read": _pages(accepted, inputs),
        "failures_coded": _coded(accepted),
        "outputs_rendered": _rendered(accepted),
        "events_end": _events(accepted),
        "keys_expire": _keys(store, accepted),
        "worker_memory_bounded": {"held": max(rss.values(), default=0.0)
                                  <= WORKER_RSS_LIMIT_MB,
                                  "largest_mb": round(max(rss.values(), default=0.0), 1),
                                  "processes_seen": len(rss)},
        "jobs_ran": {"held": bool(accepted) and any(j.result for j in accepted),
                     "accepted": len(accepted)},
    }


def _one_ending(jobs: list[Job], by_job: dict[str, list[Delivery]]) -> dict[str, Any]:
    unended = [j.job_id for j in jobs if j.final is None]
    split = []
    for job in jobs:
        events = {d.event_id for d in by_job.get(job.job_id or "", [])}
        statuses = {d.status for d in by_job.get(job.job_id or "", [])}
        if len(events) > 1 or (job.final is not None and statuses - {job.final["status"]}):
            split.append({"job": job.job_id, "events": sorted(events),
                          "final": job.final and job.final["status"]})
    return {"held": not unended and not split, "unended": unended[:20],
            "unended_count": len(unended), "two_endings": split[:20]}


def _callbacks(jobs: list[Job], by_job: dict[str, list[Delivery]]) -> dict[str, Any]:
    missing, unverified = [], []
    duplicates = 0
    for job in jobs:
        if job.final is None:
            continue
        got = by_job.get(job.job_id or "", [])
        if not any(d.answered < 300 for d in got):
            missing.append(job.job_id)
        unverified += [job.job_id for d in got if not d.verified]
        accepted = [d for d in got if d.answered < 300]
        duplicates += max(0, len(accepted) - 1)
    refused = sum(1 for ds in by_job.values() for d in ds if d.answered >= 300)
    return {"held": not missing and not unverified, "missing": missing[:20],
            "missing_count": len(missing), "unverified": unverified[:20],
            "duplicates_same_event": duplicates, "refused_while_failing": refused}


def _pages(jobs: list[Job], inputs: dict[str, Input]) -> dict[str, Any]:
    wrong: list[dict[str, Any]] = []
    read = failed = 0
    worst: dict[str, float] = {}
    for job in jobs:
        if job.result is None:
            continue
        expected = inputs[job.input].pages
        pages = job.result.get("pages", [])
        numbers = [p["number"] for p in pages]
        if sorted(numbers) != list(range(1, len(expected) + 1)):
            wrong.append({"job": job.job_id, "numbers": numbers, "expected": len(expected)})
            continue
        engine = (job.result.get("engine") or {}).get("name", "")
        plain = job.output != "markdown"  # a Markdown page's text is its Markdown
        for page in pages:
            if page.get("error"):
                failed += 1
                if not page["error"].get("code"):
                    wrong.append({"job": job.job_id, "page": page["number"], "uncoded": True})
                continue
            read += 1
            source = page.get("source", "ocr")
            if source == "blank" or not plain:
                if not page.get("text", "").strip() and source != "blank":
                    wrong.append({"job": job.job_id, "page": page["number"], "empty": True})
                continue
            if source == "ocr" and engine == "vlm-api" and not page.get("fallback"):
                reference, bound, kind = SIMULATED_TEXT, ENGINE_CER["vlm-api"], "vlm-api"
            else:
                kind = "text-layer" if source == "text-layer" else "tesseract"
                reference, bound = expected[page["number"] - 1], ENGINE_CER[kind]
            error = cer(reference, page.get("text", ""))
            worst[kind] = max(error, worst.get(kind, 0.0))
            if error > bound:
                wrong.append({"job": job.job_id, "page": page["number"], "kind": kind,
                              "cer": round(error, 4), "output": job.output})
    return {"held": not wrong, "pages_read": read, "pages_failed": failed,
            "worst_cer": {k: round(v, 4) for k, v in worst.items()}, "wrong": wrong[:20],
            "wrong_count": len(wrong)}


def _coded(jobs: list[Job]) -> dict[str, Any]:
    codes: Counter[str] = Counter()
    for job in jobs:
        if job.final is not None and job.final["status"] == "FAILURE":
            codes[(job.final.get("error") or {}).get("code") or "(none)"] += 1
        for page in (job.result or {}).get("pages", []):
            if page.get("error"):
                codes["page:" + (page["error"].get("code") or "(none)")] += 1
    bad = {c: n for c, n in codes.items() if c.endswith(("internal_error", "(none)"))}
    return {"held": not bad, "codes": dict(codes), "uncoded_or_internal": bad}


def _events(jobs: list[Job]) -> dict[str, Any]:
    watched = [j for j in jobs if j.watched]
    wrong = [{"job": j.job_id, "event": j.event_end, "final": j.final and j.final["status"]}
             for j in watched if j.final is None or j.event_end != j.final["status"]]
    return {"held": not wrong, "watched": len(watched), "wrong": wrong[:20],
            "wrong_count": len(wrong),
            "streams_reopened": sum(j.event_streams - 1 for j in watched if j.event_streams)}


def _rendered(jobs: list[Job]) -> dict[str, Any]:
    missing = [j.job_id for j in jobs if j.result is not None and j.output in
               ("pdf", "hocr", "markdown") and j.final and j.final["status"] in
               ("SUCCESS", "PARTIAL") and not j.rendered.get(j.output)]
    return {"held": not missing, "missing": missing[:20],
            "rendered": sum(1 for j in jobs if j.rendered)}


def _keys(store: redis.Redis, jobs: list[Job]) -> dict[str, Any]:
    without_ttl: list[str] = []
    inputs_left: list[str] = []
    counted = 0
    for raw in store.scan_iter(count=1000):
        key = raw.decode(errors="replace")
        if key.startswith(("_kombu.", "{")) or key in (UNACKED_MUTEX_KEY, SWEEP_LOCK_KEY):
            continue  # the broker's own bookkeeping
        if key.startswith(("ocr:blob:", "ocr:api:upload:")):
            inputs_left.append(key)
        if not key.startswith(("ocr:", "celery-task-meta-")) or key.startswith(NO_TTL):
            continue
        counted += 1
        if store.ttl(raw) == -1:
            without_ttl.append(key)
    # A job's own input (its control hash names it) must be gone once it ended. An input
    # no job names is a submission's that an outage cut short after its upload was
    # stored (Redis restarted mid-request, the client sent it again): it expires with
    # its TTL (OCR_BLOB_TTL), as tasks/state/keys.py promises, and is counted here.
    job_inputs = {}
    for job in jobs:
        blob = store.hget(f"ocr:job:{job.job_id}", "blob")
        if blob:
            job_inputs[blob.decode() if isinstance(blob, bytes) else str(blob)] = job
    # A PARTIAL job keeps its input: `retry` re-reads its failed pages from it (until
    # OCR_BLOB_TTL; docs/tasks.md).
    of_ended_jobs = [k for k in inputs_left
                     if k in job_inputs and job_inputs[k].final is not None
                     and (job_inputs[k].final or {}).get("status") != "PARTIAL"]
    return {"held": not without_ttl and not of_ended_jobs, "keys_checked": counted,
            "without_ttl": without_ttl[:20], "inputs_of_ended_jobs": of_ended_jobs[:20],
            "orphan_inputs_with_ttl": [k for k in inputs_left if k not in job_inputs][:20]}
