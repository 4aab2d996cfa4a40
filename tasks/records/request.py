"""The job request: `ocr.document`'s kwargs decoded into a typed record.

The wire contract other services speak (docs/tasks.md): its arguments and the values
they take. Pure: runs in every process that sends or reads a job (clients, the HTTP
API, worker children, the worker parent).
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from tasks.errors import BadRequest, InvalidPages, NoPages, TooManyPages
from tasks.records.engines import VLM_ENGINES
from tasks.records.formats import OUTPUT_NAMES
from tasks.records.status import JobStatus

# PDFs: keep text layers where present (auto), OCR every page, or text layers only.
PDF_MODES = ("auto", "ocr", "text")
OUTPUT_CHOICES = OUTPUT_NAMES  # the table of formats: tasks/records/formats.py
# Outputs drawn from word boxes: refused (`output_unsupported`) by engines without words.
WORD_BOX_OUTPUTS = ("pdf", "hocr", "alto")
# A tesseract language set: codes joined by `+` (eng, vie, chi_sim, ell+eng).
LANG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}(\+[A-Za-z][A-Za-z0-9_]{0,31}){0,7}$")
# `lang=auto`: each page read in the languages of the script found on it (the default of a
# job without `lang` unless OCR_LANG names a set; docs/languages.md).
AUTO_LANG = "auto"

SOURCES = ("data_b64", "blob", "path", "url")

OPTIONS = ("filename", "engine", "pages", "password", "output", "mode", "lang", "callback_task",
           "callback_queue", "callback_url", "merge_from", "result_url", "url_version",
           "url_etag", "ground_truth", "escalate", "sealed")
# What this project's senders keep out of a message: stored apart under a random name
# only the message carries (`sealed`, tasks/state/job_control.py), read by workers
# alone. A sender that puts them in the message still is read as before.
SEALED_OPTIONS = ("password", "ground_truth")
SEALED_TOKEN = re.compile(r"^[0-9a-f]{32}$")
NUMBER_OPTIONS = ("deadline",)
# Numbers from 0 to 1: `escalate_below`, the mean word confidence a page is read again below.
FRACTION_OPTIONS = ("escalate_below",)
# `no_cache`: read the input afresh, never answered from the result cache (the fresh
# result then replaces the cached one).
BOOLEAN_OPTIONS = ("no_cache",)
# Request fields that do not change the result: left out of the cache key. The
# password is checked separately (tasks/lifecycle/jobs.py): a cached result of an
# encrypted input is served only to a request whose password opens it.
# A `url` input's identity (URL and ETag/version) is keyed instead of its bytes
# (tasks/lifecycle/jobs.py); where its result is written does not change it.
NOT_IN_RESULT = ("source", "blob", "path", "url", "data_b64", "filename", "password",
                 "client", "no_cache", "deadline", "callback_task", "callback_queue",
                 "callback_url", "merge_from", "result_url", "url_version", "url_etag",
                 "ground_truth", "sealed")
_TASK_NAME = re.compile(r"^[A-Za-z_][\w.:-]{0,199}$")


def clean_filename(name: str) -> str:
    """A file name as every reader shows it: its control and format characters dropped.

    Controls (NUL, C0, DEL, C1) and format characters (the right-to-left override and
    the other bidi controls, zero-width ones) are taken out, never refused: the name
    is a label, and `invoice` U+202E `fdp.exe` would otherwise show as `invoiceexe.pdf`.
    """
    return "".join(c for c in name if unicodedata.category(c) not in ("Cc", "Cf"))


@dataclass(frozen=True)
class JobRequest:
    """The validated arguments of one `ocr.document` job (the input itself excluded).

    Built once by each door (`for_door`), taken by the gate and sent by the sender
    (`to_kwargs`); decoded once more by the task from its message (`from_kwargs`).
    `source` is "" while a door's input is not stored yet (an upload, a local file).
    """

    source: str
    blob: str | None = None
    path: str | None = None
    url: str | None = None  # s3:// or http(s):// object the worker reads itself
    data_b64: str | None = field(default=None, repr=False)
    filename: str = ""
    engine: str | None = None
    pages: str | None = None
    password: str | None = None
    output: str = "text"
    mode: str = "auto"
    lang: str | None = None
    deadline: float | None = None
    callback_task: str | None = None
    callback_queue: str | None = None
    callback_url: str | None = None
    merge_from: str | None = None
    result_url: str | None = None  # s3:// object or prefix (ending /) the result goes to
    # The version of `url` to read (a retry reads what the retried job read): an s3://
    # version id, else the ETag it must still have.
    url_version: str | None = None
    url_etag: str | None = None
    # Who sent the job (tasks/records/clients.py): from its message's `ocr_client`
    # header, never from its kwargs; "" for the anonymous client.
    client: str = ""
    no_cache: bool = False  # read afresh: not answered from the result cache
    # The document's text as it should read (pages split by form feeds): the result
    # then carries `scores` against it (tasks/evaluation/scoring.py).
    ground_truth: str | None = field(default=None, repr=False)
    # The engine that reads again the pages the job's engine is unsure of (a VLM), and
    # the mean word confidence (0-1) a page is read again below (docs/escalation.md).
    escalate: str | None = None
    escalate_below: float | None = None
    # The name of the job's sealed arguments (SEALED_OPTIONS), freed with the job.
    sealed: str | None = field(default=None, repr=False)

    @classmethod
    def for_door(cls, kwargs: Mapping[str, Any]) -> JobRequest:
        """A door's request from `ocr.document`'s kwargs: their shape checked.

        Its input may come apart (`source` "": stored as the job is sent, `stored_as`);
        its engine is the gate's to check (tasks/admission.py), against live workers.
        """
        return cls.from_kwargs(kwargs, None, input_apart=True)

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], engines: Collection[str] | None,
                    input_apart: bool = False) -> JobRequest:
        """Validate the kwargs' shape; `engines`: the engine names a job may ask for.

        The callback URL's policy, and that of `url` and `result_url`
        (OCR_ALLOWED_URLS), are checked where the request is used
        (`tasks.lifecycle.inputs.decode_request`), not here. `engines` None: any
        name; `input_apart`: kwargs naming no input are a request whose `source` is "".
        """
        unknown = sorted(set(kwargs) - set(SOURCES) - set(OPTIONS) - set(NUMBER_OPTIONS)
                         - set(FRACTION_OPTIONS) - set(BOOLEAN_OPTIONS))
        if unknown:
            raise BadRequest(f"unknown argument(s): {', '.join(unknown)}")
        given = [s for s in SOURCES if kwargs.get(s) not in (None, "")] or \
            ([""] if input_apart else [])
        if len(given) != 1:
            raise BadRequest("give exactly one of data_b64, blob, path or url")
        for name in (*SOURCES, *OPTIONS):
            value = kwargs.get(name)
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"`{name}` must be a string")
        for name in NUMBER_OPTIONS:
            value = kwargs.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise BadRequest(f"`{name}` must be a number (seconds since the epoch)")
        for name in FRACTION_OPTIONS:
            value = kwargs.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))
                                      or not 0 <= value <= 1):
                raise BadRequest(f"`{name}` must be a number from 0 to 1")
        for name in BOOLEAN_OPTIONS:
            if kwargs.get(name) is not None and not isinstance(kwargs[name], bool):
                raise BadRequest(f"`{name}` must be true or false")
        chosen = {k: kwargs[k] for k in (*SOURCES, *OPTIONS, *NUMBER_OPTIONS,
                                         *FRACTION_OPTIONS, *BOOLEAN_OPTIONS)
                  if kwargs.get(k) not in (None, "")}
        if "filename" in chosen:
            chosen["filename"] = clean_filename(chosen["filename"])
        request = cls(source=given[0], **chosen)
        if request.engine is not None and engines is not None \
                and request.engine not in engines:
            raise BadRequest(f"unknown engine {request.engine!r}; choose one of "
                             f"{', '.join(engines)}")
        if request.escalate is not None and request.escalate not in VLM_ENGINES:
            raise BadRequest(f"`escalate` must name a vision-language engine: "
                             f"{' or '.join(VLM_ENGINES)}")
        if request.output not in OUTPUT_CHOICES:
            raise BadRequest(f"`output` must be one of {', '.join(OUTPUT_CHOICES)}")
        if request.lang is not None and not LANG_PATTERN.match(request.lang):
            raise BadRequest("`lang` must be tesseract language codes joined by +, e.g. "
                             "vie, chi_sim or ell+eng, or auto")
        if request.mode not in PDF_MODES:
            raise BadRequest(f"`mode` must be one of {', '.join(PDF_MODES)}")
        if request.sealed is not None and not SEALED_TOKEN.match(request.sealed):
            raise BadRequest("`sealed` must be 32 lowercase hex digits")
        for name in ("callback_task", "callback_queue"):
            value = getattr(request, name)
            if value is not None and not _TASK_NAME.match(value):
                raise BadRequest(f"`{name}` is not a task or queue name")
        return request

    def cache_options(self, engine: str, model: str | None) -> dict[str, Any]:
        """What, beside the input bytes, decides the result (settings: the caller's)."""
        options = asdict(self)
        for name in NOT_IN_RESULT:
            options.pop(name)
        if self.escalate is None:  # no escalation: keyed as a job that names neither
            options.pop("escalate")
            options.pop("escalate_below")
        return {**options, "engine": engine, "model": model}

    def with_default_lang(self, default: str) -> JobRequest:
        """The request with `lang` set: its own, else the worker's default (OCR_LANG).

        Set before the cache key is made, so that a result read with `auto` is never
        served to a job read with a named set, and the other way round.
        """
        return self if self.lang else replace(self, lang=default)

    def with_escalation(self, engine: str, below: float) -> JobRequest:
        """The request with its escalation settled: its own, else the fleet's defaults.

        `engine` and `below` are OCR_ESCALATE_ENGINE ("": none) and OCR_ESCALATE_BELOW.
        A job without an escalation engine keeps no threshold. Set before the cache key
        is made, as `with_default_lang` is.
        """
        escalate = self.escalate or engine or None
        if escalate is None:
            return replace(self, escalate=None, escalate_below=None)
        return replace(self, escalate=escalate, escalate_below=below
                       if self.escalate_below is None else float(self.escalate_below))

    def to_kwargs(self) -> dict[str, Any]:
        """`ocr.document`'s kwargs (docs/tasks.md): every argument not at its default.

        No `source` (the input's own name says it), no `client` (its message's header).
        """
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("source", "client")
                and getattr(self, f.name) != (None if f.default is MISSING else f.default)}

    def to_json(self) -> dict[str, Any]:
        """The request as stored in Redis: no inline payload (it is in a blob by then)."""
        out = asdict(self)
        out.pop("data_b64")
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobRequest:
        return cls(**data)

    def stored_as(self, blob: str) -> JobRequest:
        """The same request with its input now in the blob store under `blob`."""
        return replace(self, source="blob", blob=blob, path=None, url=None, data_b64=None)


def retry_request(earlier: dict[str, Any], job_id: str,
                  password: str | None = None) -> dict[str, Any]:
    """The `ocr.document` kwargs that re-read the failed pages of a PARTIAL job.

    `earlier` is that job's result (`job_id`); the new job merges its good pages
    (`merge_from`).
    """
    by_url = (earlier.get("input_url") or {}).get("url")
    if earlier.get("status") != JobStatus.PARTIAL or not (earlier.get("input_blob") or by_url):
        raise BadRequest("only a PARTIAL job whose input is still stored can be retried")
    failed = ",".join(str(p["number"]) for p in earlier["failed_pages"])
    source: dict[str, Any] = {"blob": earlier.get("input_blob")}
    if not earlier.get("input_blob"):  # the version the retried job read, no other
        pinned = earlier["input_url"]
        source = {"url": by_url, "url_version": pinned.get("version"),
                  "url_etag": None if pinned.get("version") else pinned.get("etag")}
        source = {k: v for k, v in source.items() if v}
    written = earlier.get("result_object") or {}
    if written.get("url") and not written.get("error"):
        source["result_url"] = written["url"]  # the whole result replaces the partial
    kwargs = {**source, "filename": earlier.get("filename", ""),
              "pages": failed, "output": earlier.get("output", "text"),
              "mode": earlier.get("mode", "auto"), "engine": earlier["engine"]["name"],
              "lang": earlier.get("lang"), "merge_from": job_id}
    if password:
        kwargs["password"] = password
    return kwargs


_PAGE_PART = re.compile(r"^\s*(\d+)?\s*(-)?\s*(\d+)?\s*$")
# The highest page number a selection may name (a 32-bit page count's).
MAX_PAGE_NUMBER = 2**31 - 1


def page_range(part: str, count: int) -> tuple[int, int]:
    """One part of a selection such as "1-3,7" (`3`, `1-5`, `4-`, `-2`): first, last.

    The one rule of the syntax: clients check it before sending (`check_pages`), the
    worker applies it to the document's `count` pages (`select_pages`).
    """
    match = _PAGE_PART.match(part)
    if not match or not (match.group(1) or match.group(3)):
        raise InvalidPages(f"{part.strip()!r} is not a page or range like 3 or 1-5")
    start, dash, end = match.groups()
    if any(len(n) > len(str(MAX_PAGE_NUMBER)) or int(n) > MAX_PAGE_NUMBER
           for n in (start, end) if n):
        raise InvalidPages(f"{part.strip()!r}: page numbers go up to {MAX_PAGE_NUMBER:,}")
    first = int(start) if start else 1
    last = (int(end) if end else count) if dash else first
    if first < 1 or last < first:
        raise InvalidPages(f"{part.strip()!r} is not an increasing range of pages from 1")
    if first > count:
        raise InvalidPages(f"page {first} is beyond the last page ({count})")
    return first, min(last, count)


def select_pages(spec: str | None, count: int, max_pages: int) -> list[int]:
    """1-based page numbers chosen by `spec` (None or "" for all) out of `count` pages."""
    if count <= 0:
        raise NoPages()
    if not spec or not spec.strip():
        numbers = list(range(1, count + 1))
    else:
        chosen: set[int] = set()
        for part in spec.split(","):
            first, last = page_range(part, count)
            chosen.update(range(first, last + 1))
        numbers = sorted(chosen)
    if len(numbers) > max_pages:
        raise TooManyPages(f"{len(numbers)} pages selected, the limit is {max_pages}")
    return numbers


def last_named(spec: str | None) -> int:
    """The highest page a selection names by number (`1-99` names 99; `4-` none: 0)."""
    named = 0
    for part in (spec or "").split(","):
        match = _PAGE_PART.match(part)
        if match:
            named = max([named, *(int(n) for n in (match.group(1), match.group(3)) if n)])
    return named


def check_pages(spec: str | None) -> None:
    """Refuse (`invalid_pages`) a selection no document could satisfy: its syntax."""
    if spec and spec.strip():
        for part in spec.split(","):
            page_range(part, sys.maxsize)
