"""Job requests: decoding and validating `ocr.document` kwargs, and reading the input.

Runs in worker children (and in clients for validation of options).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import re
import stat
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import BadRequest, InputNotFound, InputTooLarge, PathNotAllowed
from tasks.pipeline.callback_urls import callback_target
from worker_config import LANG_PATTERN, OUTPUT_CHOICES, PDF_MODES

if TYPE_CHECKING:
    from tasks.state.stores import BlobStore
    from worker_config import Settings

SOURCES = ("data_b64", "blob", "path")
OPTIONS = ("filename", "engine", "pages", "password", "output", "mode", "lang", "callback_task",
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
    lang: str | None = None
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
        if request.lang is not None and not LANG_PATTERN.match(request.lang):
            raise BadRequest("`lang` must be tesseract language codes joined by +, e.g. "
                             "vie, chi_sim or ell+eng")
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
    """Read a file that resolves (symbolic links followed) inside an allowed root.

    The path is checked first (no access outside the roots, so callers cannot probe
    for files there), then opened once, component by component without following any
    link implicitly (`open_walk`); the file actually opened is checked against the
    roots again and read from its descriptor, so swapping a directory for a link
    between the check and the read cannot leak a file from elsewhere.
    """
    if not isinstance(raw, str) or not Path(raw).is_absolute():
        raise BadRequest("`path` must be an absolute path")
    if "\0" in raw:
        raise BadRequest("`path` contains a NUL byte")
    if not settings.allowed_roots:
        raise PathNotAllowed("path inputs are disabled (OCR_ALLOWED_ROOTS is empty)")
    try:
        resolved = Path(raw).resolve()
    except (OSError, RuntimeError):
        raise PathNotAllowed("the path cannot be resolved") from None
    if not _inside_roots(resolved, settings):
        raise PathNotAllowed("the path is outside the allowed roots")
    fd, real = open_walk(raw)
    try:
        if not _inside_roots(real, settings):
            raise PathNotAllowed("the path is outside the allowed roots")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise BadRequest("`path` is not a regular file")
        limit = settings.max_input_bytes
        if info.st_size > limit:
            raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
        with os.fdopen(fd, "rb", closefd=False) as file:
            data = file.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputTooLarge(f"the input is larger than {settings.max_input_mb} MB")
    return data


def _inside_roots(path: Path, settings: Settings) -> bool:
    return any(path.is_relative_to(root) for root in settings.allowed_roots)


_MAX_LINKS = 40  # as the kernel's own limit on links in one lookup
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_walk(path: str) -> tuple[int, Path]:
    """Open `path` following links by hand: (descriptor, the real path opened).

    Each component is opened relative to the descriptor of its directory with
    O_NOFOLLOW; a link is read and its target spliced into the rest of the walk. The
    real path is therefore known from what was opened, not from a second lookup.
    """
    todo = [p for p in path.split("/") if p]
    todo.reverse()
    real: list[str] = []
    fd = os.open("/", _DIR_FLAGS)
    links = 0
    try:
        while todo:
            name = todo.pop()
            if name == ".":
                continue
            if name == "..":
                if real:
                    fd = _replace(fd, os.open("..", _DIR_FLAGS, dir_fd=fd))
                    real.pop()
                continue
            flags = _DIR_FLAGS if todo else _FILE_FLAGS
            try:
                child = os.open(name, flags, dir_fd=fd)
            except OSError as exc:
                target = _link_target(name, fd, exc)
                links += 1
                if links > _MAX_LINKS:
                    raise PathNotAllowed("too many symbolic links in the path") from None
                parts = [p for p in target.split("/") if p]
                todo.extend(reversed(parts))
                if target.startswith("/"):
                    fd = _replace(fd, os.open("/", _DIR_FLAGS))
                    real.clear()
                continue
            fd = _replace(fd, child)
            real.append(name)
    except BaseException:
        os.close(fd)
        raise
    return fd, Path("/", *real)


def _replace(old: int, new: int) -> int:
    os.close(old)
    return new


def _link_target(name: str, dir_fd: int, error: OSError) -> str:
    """The target of the link `name` refused by O_NOFOLLOW, or the error as an OcrError."""
    if error.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError:
            pass  # not a link: report the open's own error
    if error.errno in (errno.ENOENT, errno.ENOTDIR):
        raise InputNotFound("no such file") from None
    reason = errno.errorcode.get(error.errno or 0, "error")
    raise PathNotAllowed(f"the path cannot be opened ({reason})") from None


def check_callback_url(url: str, settings: Settings) -> str:
    """The normalised `url` when a callback may go there.

    Else BadRequest (not an http(s) URL) or CallbackNotAllowed (the policy of
    tasks/pipeline/callback_urls.py: OCR_CALLBACK_ALLOWED_HOSTS, no private addresses
    unless listed, the deprecated OCR_CALLBACK_URL_PREFIXES). Resolved addresses are
    checked again at send time.
    """
    return callback_target(url, settings).url
