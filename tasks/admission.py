"""The gate: whether a job may be sent, decided the same way at every door.

Runs in client processes and in the workers (the batch driver, the golden set). Every
door calls `admit` with the client's rules (`ClientRules`, tasks/records/clients.py)
and the job's request (`JobRequest`, built once by the door, with or without its
input; its shape is checked as it is built, `JobRequest.for_door`): the HTTP API's
jobs and batches, each manifest line and listed object as the batch driver sends it,
retries, every job `OcrClient.enqueue` sends (submit.py, local batches), the golden
set (tasks/queue/golden.py, given `admit`). It checks, in this order:

1. the priority: above the client's highest, `priority_not_allowed` (403 at the API);
   a job naming none gets `normal`, or the client's highest when that is lower;
2. every URL the job names (`url`, `result_url`) against what the client reads
   (`url_policy.readable`: its own prefixes and OCR_SHARED_READ_URLS within
   OCR_ALLOWED_URLS; the bound alone for the operator's doors), and `result_url` as a
   place a result may be written (`check_result_target`: under the client's own
   prefixes, none for a client without any; never under a read-only prefix)
   (`url_not_allowed`);
3. the page selection (`invalid_pages`);
4. the engine: one that is an engine (a built-in, this process's plugins, or one a
   live worker serves; else `unknown_engine`), and one some live worker runs when
   OCR workers are live (`engine_unavailable`, naming its `make` target), or whose
   pool scales from zero (OCR_ENGINES_FROM_ZERO: the job waits in its queue, whose
   depth wakes the pool); so is the engine the job escalates to (`escalate`);
5. the languages of its `lang` (`check_languages`, from the live workers' presence
   records): a code that is no tesseract language and that no live worker reads is
   `unknown_language` (with the code it likely meant: `de`, did you mean `deu`?); one
   that no live worker on the job's queue reads, when their records name their
   languages, is `language_unavailable`, naming the `OCR_LANGS` that adds it;
6. with `books` (the service's doors): the job's reservation
   (tasks/state/reservations.py), its fewest pages held against the client's page
   caps (`page_quota_exceeded`) and its place among its jobs in flight, batch
   documents counted (`quota_exceeded`; a batch waits for room instead), taken by one
   script; the pages a day of the engine it names, against the client's cap on that
   engine (`page_quota_exceeded`). Without `books` the reservation holds the queue and
   the priority alone.

The sender commits the reservation when it sends the job, or releases it.

A client door (`OcrClient`, whose settings are the sender's, not the service's)
checks OCR_ALLOWED_URLS only where its own settings name some; the worker checks the
URL again when it decodes the job, and each redirect hop against the client's
prefixes the job carries (`prefixes` in its control hash). `read_input` reads a job's
input within OCR_MAX_INPUT_MB.
"""

from __future__ import annotations

import stat
from pathlib import Path

from tasks.errors import (
    BadRequest,
    EngineUnavailable,
    InputNotFound,
    InputTooLarge,
    LanguageUnavailable,
    PriorityNotAllowed,
    UnknownEngine,
    UnknownLanguage,
    UnsupportedFormat,
)
from tasks.lifecycle.url_policy import ObjectUrl, check_target, check_url, parse_url, readable
from tasks.queue.routing import (
    PRIORITIES,
    engine_taken,
    is_job_queue,
    job_queue,
    queue_for_engine,
)
from tasks.records.clients import ClientRules
from tasks.records.engines import engine_names, install_hint
from tasks.records.jobs import Reservation
from tasks.records.languages import adding, suggestion, unknown_codes
from tasks.records.request import AUTO_LANG, JobRequest, check_pages
from tasks.settings import Settings
from tasks.state.reservations import Reservations
from tasks.state.usage import PageCaps, fewest_pages

ENGINE_QUEUE_PREFIX = queue_for_engine("")  # "ocr-": a queue named after an engine
DEFAULT_PRIORITY = "normal"


def job_queues(queues: set[str]) -> set[str]:
    """Of a worker's queues, those jobs are sent to.

    No control or `<node>.dq2` queue, and no queue of one priority (quorum queues).
    """
    return {q for q in queues if is_job_queue(q)}


def ocr_queues(live: dict[str, set[str]]) -> set[str]:
    """The queues live OCR workers consume (control and direct queues left out)."""
    return job_queues(set().union(*live.values()))


def live_engines(live: dict[str, set[str]]) -> list[str]:
    """The engines live OCR workers run: those whose queue (`ocr-<engine>`) one consumes."""
    return sorted(q[len(ENGINE_QUEUE_PREFIX):] for q in ocr_queues(live)
                  if q.startswith(ENGINE_QUEUE_PREFIX))


def known_engines(settings: Settings, live: dict[str, set[str]]) -> tuple[str, ...]:
    """Engines a job may name: the registry's, this client's plugins, the live workers'."""
    return tuple(dict.fromkeys([*engine_names(tuple(settings.engine_plugins)),
                                *live_engines(live)]))


def priority_for(rules: ClientRules, priority: str | None) -> str:
    """The priority a job is sent at: its own when allowed, else PriorityNotAllowed.

    One naming none gets `normal`, or the client's highest when that is lower.
    """
    top = PRIORITIES.get(rules.max_priority or "", 0)
    if priority is None:
        return DEFAULT_PRIORITY if PRIORITIES[DEFAULT_PRIORITY] >= top \
            else str(rules.max_priority)
    if priority not in PRIORITIES:
        raise BadRequest(f"priority must be one of {', '.join(PRIORITIES)}")
    if PRIORITIES[priority] < top:
        raise PriorityNotAllowed(f"client {rules.name!r} may send jobs of priority "
                                 f"{rules.max_priority} or lower, not {priority}")
    return priority


def check_job_url(raw: str, rules: ClientRules, settings: Settings, what: str = "`url`",
                  prefix_ok: bool = False, service: bool = True) -> ObjectUrl:
    """The parsed URL when the client reads it (`url_policy.readable`).

    Else `url_not_allowed` (`bad_request` for a URL that is none). `service`: the
    caller's settings are the service's, so an empty OCR_ALLOWED_URLS refuses; a
    client door's may not name the bound, and the worker checks again.
    """
    if service or settings.allowed_urls:
        return check_url(raw, readable(settings.allowed_urls, settings.shared_read_urls,
                                       rules.allowed_urls), what, prefix_ok)
    if rules.allowed_urls is not None:
        return check_url(raw, (*rules.allowed_urls, *settings.shared_read_urls), what,
                         prefix_ok)
    return parse_url(raw, what, prefix_ok)


def check_result_target(raw: str, rules: ClientRules, settings: Settings,
                        what: str = "`result_url`", service: bool = True,
                        batch: bool = False) -> ObjectUrl:
    """The parsed `result_url` (or a batch's target) when a result may be written there.

    `check_job_url`, then the URL policy's `check_target`: under the client's own
    result prefixes (`ClientRules.result_urls`), never reaching a read-only prefix
    (`Settings.readonly_prefixes`). `batch`: a batch's target, any name under which
    is written. Else `url_not_allowed`.
    """
    parsed = check_job_url(raw, rules, settings, what, prefix_ok=True, service=service)
    return check_target(parsed, rules.result_urls, settings.readonly_prefixes, what,
                        whole_prefix=batch)


def admit(request: JobRequest, rules: ClientRules, settings: Settings,
          live: dict[str, set[str]], *, priority: str | None = None,
          books: Reservations | None = None, service: bool = True,
          job_id: str = "") -> Reservation:
    """The job's reservation, or its error (see the module's list).

    `live`: the queues of each live worker (`WorkerPresence.live_queues`); `job_id`:
    the id the job is sent under.
    """
    chosen = priority_for(rules, priority)
    if request.url:
        check_job_url(request.url, rules, settings, service=service)
    if request.result_url:
        check_result_target(request.result_url, rules, settings, service=service)
    check_options(request, settings, live)
    queue = job_queue(request.engine)
    if books is None:
        return Reservation(job_id, rules.name, queue, chosen)
    return books.take(job_id, rules.name, queue, chosen, limit=rules.jobs_in_flight,
                      caps=PageCaps(rules.pages_per_day, rules.pages_per_month,
                                    rules.engine_pages_per_day),
                      pages=fewest_pages(request.pages), engine=request.engine)


def check_options(request: JobRequest, settings: Settings,
                  live: dict[str, set[str]]) -> None:
    """The page selection, the engines and the languages (steps 3 to 5)."""
    engines = known_engines(settings, live)
    if request.engine and request.engine not in engines:
        raise UnknownEngine(f"unknown engine {request.engine!r}; choose one of "
                            f"{', '.join(engines)}")
    check_pages(request.pages)
    served = ocr_queues(live)
    for wanted in (request.engine, request.escalate):  # it reads it, it escalates to it
        if wanted and served and engine_taken(wanted, live, settings) is None:
            raise EngineUnavailable(f"no live worker runs engine {wanted!r}: start "
                                    f"{install_hint(wanted)}; nothing was sent")
    check_languages(request, live)


def read_languages(request: JobRequest, live: dict[str, set[str]]) -> set[str] | None:
    """The codes the live workers on the job's queue read with its engine (or routing).

    None where that cannot be told: a worker's record names no languages, or one of
    its engines takes any (a VLM).
    """
    queue = job_queue(request.engine)
    read: set[str] = set()
    for queues in live.values():
        if queue not in queues:
            continue
        languages = getattr(queues, "languages", None)
        if languages is None:
            return None
        for engine, codes in languages.items():
            if request.engine and engine != request.engine:
                continue
            if codes is None:
                return None
            read.update(codes)
    return read


def check_languages(request: JobRequest, live: dict[str, set[str]]) -> None:
    """Step 5: each code of the job's `lang` is one some live worker reads."""
    if not request.lang or request.lang == AUTO_LANG:
        return
    everywhere = {code for queues in live.values()
                  for codes in (getattr(queues, "languages", None) or {}).values()
                  for code in codes or ()}
    unknown = [code for code in unknown_codes(request.lang) if code not in everywhere]
    if unknown:
        meant = [f"{code!r}: did you mean {hint!r}?" for code in unknown
                 if (hint := suggestion(code))]
        raise UnknownLanguage(
            f"{', '.join(map(repr, unknown))} is no tesseract language code and no live "
            f"worker reads it{' (' + '; '.join(meant) + ')' if meant else ''}; "
            "`submit.py langs` lists what they read, docs/languages.md how to add one; "
            "nothing was sent")
    read = read_languages(request, live)
    if not read:
        return  # no live worker on its queue yet, or one that cannot say
    missing = [code for code in request.lang.split("+") if code not in read]
    if missing:
        raise LanguageUnavailable(f"no live worker reads {'+'.join(missing)}: "
                                  f"{adding(missing, sorted(read))}; nothing was sent")


def read_input(source: str | Path | bytes, settings: Settings) -> bytes:
    """The bytes of a job's input (a file or bytes); `input_too_large` past the limit.

    A folder is `unsupported_format`.
    """
    limit = settings.max_input_bytes
    if isinstance(source, bytes):
        data = source
    else:
        path = Path(source)
        try:
            info = path.stat()
        except OSError:
            raise InputNotFound(f"cannot read {path}") from None
        if stat.S_ISDIR(info.st_mode):
            raise UnsupportedFormat(f"{path} is a folder, not a file")
        if info.st_size > limit:
            raise InputTooLarge(f"{path.name} is larger than {settings.max_input_mb} MB")
        data = path.read_bytes()
    if len(data) > limit:
        raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
    return data
