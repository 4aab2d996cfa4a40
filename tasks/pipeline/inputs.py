"""Job requests: decoding and validating `ocr.document` kwargs, and reading the input.

Runs in worker children (and in clients for validation of options).
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from tasks.errors import BadRequest, InputNotFound, InputTooLarge, PathNotAllowed
from tasks.pipeline.pdf import PDF_MODES
from worker_config import OUTPUT_CHOICES

if TYPE_CHECKING:
    from tasks.state.stores import BlobStore
    from worker_config import Settings

SOURCES = ("data_b64", "blob", "path")
OPTIONS = ("filename", "engine", "pages", "password", "output", "mode", "callback_task",
           "callback_queue", "callback_url", "merge_from")
NUMBER_OPTIONS = ("deadline",)
# Request fields that do not change the result: left out of the cache key. The
# password is checked separately (tasks/lifecycle/jobs.py): a cached result of an
# encrypted input is served only to a request whose password opens it.
NOT_IN_RESULT = ("source", "blob", "path", "data_b64", "filename", "password", "deadline",
                 "callback_task", "callback_queue", "callback_url", "merge_from")
_TASK_NAME = re.compile(r"^[A-Za-z_][\w.:-]{0,199}$")


@dataclass(frozen=True)
class JobRequest:
    """The validated arguments of one `ocr.document` job (the input itself excluded)."""

    source: str
    blob: str | None = None
    path: str | None = None
    data_b64: str | None = field(default=None, repr=False)
    filename: str = ""
    engine: str | None = None
    pages: str | None = None
    password: str | None = None
    output: str = "text"
    mode: str = "auto"
    deadline: float | None = None
    callback_task: str | None = None
    callback_queue: str | None = None
    callback_url: str | None = None
    merge_from: str | None = None

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any], settings: Settings) -> JobRequest:
        unknown = sorted(set(kwargs) - set(SOURCES) - set(OPTIONS) - set(NUMBER_OPTIONS))
        if unknown:
            raise BadRequest(f"unknown argument(s): {', '.join(unknown)}")
        given = [s for s in SOURCES if kwargs.get(s) not in (None, "")]
        if len(given) != 1:
            raise BadRequest("give exactly one of data_b64, blob or path")
        for name in (*SOURCES, *OPTIONS):
            value = kwargs.get(name)
            if value is not None and not isinstance(value, str):
                raise BadRequest(f"`{name}` must be a string")
        for name in NUMBER_OPTIONS:
            value = kwargs.get(name)
            if value is not None and (isinstance(value, bool)
                                      or not isinstance(value, (int, float))):
                raise BadRequest(f"`{name}` must be a number (seconds since the epoch)")
        chosen = {k: kwargs[k] for k in (*SOURCES, *OPTIONS, *NUMBER_OPTIONS)
                  if kwargs.get(k) not in (None, "")}
        request = cls(source=given[0], **chosen)
        if request.engine is not None and request.engine not in settings.all_engine_names():
            raise BadRequest(f"unknown engine {request.engine!r}; choose one of "
                             f"{', '.join(settings.all_engine_names())}")
        if request.output not in OUTPUT_CHOICES:
            raise BadRequest(f"`output` must be one of {', '.join(OUTPUT_CHOICES)}")
        if request.mode not in PDF_MODES:
            raise BadRequest(f"`mode` must be one of {', '.join(PDF_MODES)}")
        for name in ("callback_task", "callback_queue"):
            value = getattr(request, name)
            if value is not None and not _TASK_NAME.match(value):
                raise BadRequest(f"`{name}` is not a task or queue name")
        if request.callback_url is not None:
            check_callback_url(request.callback_url, settings)
        return request

    def cache_options(self, engine: str, model: str | None) -> dict[str, Any]:
        """What, beside the input bytes, decides the result (settings: the caller's)."""
        options = asdict(self)
        for name in NOT_IN_RESULT:
            options.pop(name)
        return {**options, "engine": engine, "model": model}

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
        return replace(self, source="blob", blob=blob, path=None, data_b64=None)


def read_input(request: JobRequest, settings: Settings, blobs: BlobStore) -> bytes:
    """The input bytes, from the message, the blob store or an allowed path."""
    limit = settings.max_input_bytes
    if request.source == "data_b64":
        encoded = request.data_b64
        if not isinstance(encoded, str):
            raise BadRequest("`data_b64` must be a base64 string")
        if len(encoded) * 3 // 4 > limit + 3:
            raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("`data_b64` is not valid base64") from None
    elif request.source == "blob":
        data = blobs.get(request.blob)  # type: ignore[arg-type]
    else:
        data = read_path(request.path, settings)
    if len(data) > limit:
        raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
    return data


def read_path(raw: Any, settings: Settings) -> bytes:
    """Read a file that resolves (symbolic links followed) inside an allowed root."""
    if not isinstance(raw, str) or not Path(raw).is_absolute():
        raise BadRequest("`path` must be an absolute path")
    if not settings.allowed_roots:
        raise PathNotAllowed("path inputs are disabled (OCR_ALLOWED_ROOTS is empty)")
    try:
        # Links are followed as far as they exist; the root check comes before any
        # existence check, so callers cannot probe for files outside the roots.
        resolved = Path(raw).resolve()
    except (OSError, RuntimeError):
        raise PathNotAllowed("the path cannot be resolved") from None
    if not any(resolved.is_relative_to(root) for root in settings.allowed_roots):
        raise PathNotAllowed("the path is outside the allowed roots")
    if not resolved.exists():
        raise InputNotFound("no such file")
    if not resolved.is_file():
        raise BadRequest("`path` is not a regular file")
    if resolved.stat().st_size > settings.max_input_bytes:
        raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
    return resolved.read_bytes()


def check_callback_url(url: str, settings: Settings) -> None:
    """An http(s) URL, under OCR_CALLBACK_URL_PREFIXES when that is set."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise BadRequest("`callback_url` must be an http or https URL")
    prefixes = settings.callback_url_prefixes
    if prefixes and not any(url.startswith(prefix) for prefix in prefixes):
        raise BadRequest("`callback_url` is not under an allowed prefix")
