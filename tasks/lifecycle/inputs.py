"""Reading a job's input and decoding its request, in the worker.

`decode_request` turns `ocr.document`'s kwargs into a `JobRequest` and checks its
callback URL against this worker's policy; `read_input` fetches the input's bytes from
the message, the blob store or an allowed path (opened without following links), so
that the pipeline receives bytes and never touches Redis. Runs in worker pool children
(and in the worker parent, to decode the request of a job it ends).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.errors import BadRequest, InputNotFound, InputTooLarge, PathNotAllowed
from tasks.lifecycle.callback_urls import callback_target
from tasks.lifecycle.url_inputs import check_input_url, check_result_url
from tasks.records.request import JobRequest

if TYPE_CHECKING:
    from tasks.settings import Settings
    from tasks.state.stores import BlobStore


def decode_request(kwargs: dict[str, Any], settings: Settings) -> JobRequest:
    """The job's request, validated; raises BadRequest, CallbackNotAllowed, UrlNotAllowed."""
    request = JobRequest.from_kwargs(kwargs, settings.all_engine_names())
    if request.callback_url is not None:
        check_callback_url(request.callback_url, settings)
    # OCR_ALLOWED_URLS: refused here, before anything is fetched (UrlNotAllowed).
    if request.url is not None:
        check_input_url(request.url, settings)
    if request.result_url is not None:
        check_result_url(request.result_url, settings)
    # A job without `lang` is read in the worker's default (OCR_LANG: `auto` or a set).
    return request.with_default_lang(settings.default_lang)


def read_input(request: JobRequest, settings: Settings, blobs: BlobStore) -> bytes:
    """The input bytes, from the message, the blob store or an allowed path.

    A `url` input is read by tasks/lifecycle/url_inputs.py instead, after its HEAD.
    """
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
        # A blob over the limit is never read into the worker past the limit.
        data = blobs.get(request.blob, most=limit)  # type: ignore[arg-type]
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
    tasks/lifecycle/callback_urls.py: OCR_CALLBACK_ALLOWED_HOSTS, no private addresses
    unless listed, the deprecated OCR_CALLBACK_URL_PREFIXES). Resolved addresses are
    checked again at send time.
    """
    return callback_target(url, settings).url
