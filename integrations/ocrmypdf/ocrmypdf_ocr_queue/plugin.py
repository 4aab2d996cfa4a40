"""OCRmyPDF's hooks: the options, the check before any page, and the engine.

Runs in OCRmyPDF's main process (`add_options`, `check_options`) and in its page
workers (`get_ocr_engine` and the engine's calls; each worker imports this module
again, so nothing here is shared between them but the options OCRmyPDF passes).

The plugin is chosen by its URL: `--ocr-queue-url` (or OCR_QUEUE_URL) set and
`--ocr-engine` left at `auto`. Every page image OCRmyPDF hands over becomes one job;
OCRmyPDF's `--jobs N` gives N pages in flight, the plugin adds no parallelism.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ocrmypdf import OcrOptions, hookimpl
from ocrmypdf.exceptions import BadArgsError, MissingDependencyError, SubprocessOutputError
from ocrmypdf.pluginspec import OcrEngine, OrientationConfidence

from ocrmypdf_ocr_queue import __version__
from ocrmypdf_ocr_queue.errors import PageFailed, QueueError, Refused, Unreachable
from ocrmypdf_ocr_queue.pages import PageJob, PageRead, fitted_hocr, page_label

log = logging.getLogger(__name__)

DEFAULT_PAGE_DEADLINE = 600.0
SANDWICH = ("ocr-queue: the service gives hOCR, not a text-only PDF: leave --pdf-renderer "
            "at auto (not sandwich)")
# OCRmyPDF's threshold is 0-15 (tesseract's OSD confidence); the service applies its own
# (tesseract's, too) and reports only the rotation it decided on.
SURE = 15.0
# What OCRmyPDF puts in `languages` when none was named (`eng`).
_DEFAULT_LANGUAGES = OcrOptions.model_fields["languages"].get_default(
    call_default_factory=True)


@hookimpl
def add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "OCR queue", "Read every page through the OCR job queue (ocrmypdf-ocr-queue)")
    group.add_argument("--ocr-queue-url", metavar="URL", dest="ocr_queue_url",
                       help="the service: its HTTP API (http(s)://host:8000, with a token) "
                            "or its broker (redis://, rediss://, sentinel://...); default "
                            "OCR_QUEUE_URL. Without one OCRmyPDF reads pages itself")
    group.add_argument("--ocr-queue-token", metavar="TOKEN", dest="ocr_queue_token",
                       help="the HTTP API client's token; default OCR_QUEUE_TOKEN")
    group.add_argument("--ocr-queue-engine", metavar="ENGINE", dest="ocr_queue_engine",
                       help="the service's engine (tesseract, rapidocr, mlx-vlm, vlm-api); "
                            "default: the service's routing")
    group.add_argument("--ocr-queue-page-deadline", metavar="SECONDS", type=float,
                       dest="ocr_queue_page_deadline",
                       help="seconds a page may take, queue wait included, before it "
                            f"fails (default {DEFAULT_PAGE_DEADLINE:.0f})")
    # OCRmyPDF's `-l` action appends to the list the command line starts with, which
    # is this one (argparse sets a default as it is, without a copy); OCRmyPDF then
    # turns an empty list into `eng`, so the plugin keeps the list under its own name
    # to tell whether `-l` was given. A fresh list for each parser.
    given: list[str] = []
    parser.set_defaults(languages=given, ocr_queue_languages_given=given)


def _option(options: Any, name: str, env: str | None = None) -> Any:
    """A plugin option: the command line's or the API's (`ocr_queue_url=`), else `env`."""
    extra = getattr(options, "extra_attrs", None) or {}
    value = extra.get(name)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return value


def _active(options: Any) -> bool:
    if options is None:
        return False
    if getattr(options, "ocr_engine", "auto") not in (None, "auto"):
        return False  # --ocr-engine tesseract|none: OCRmyPDF's own
    return bool(_option(options, "ocr_queue_url", "OCR_QUEUE_URL"))


def _service(options: Any) -> Any:
    url = str(_option(options, "ocr_queue_url", "OCR_QUEUE_URL"))
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        from ocrmypdf_ocr_queue.broker import Broker

        return Broker(url)
    if url.startswith(("http://", "https://")):
        from ocrmypdf_ocr_queue.http_api import HttpApi

        return HttpApi(url, _option(options, "ocr_queue_token", "OCR_QUEUE_TOKEN") or "")
    raise Refused(f"--ocr-queue-url {url!r}: give the HTTP API (http:// or https://) or "
                  "the broker (redis://, rediss:// or sentinel://)")


def _lang(options: Any, given: list[str] | None) -> str:
    """The job's `lang`: the languages the caller named, else `auto`.

    The command line: `given`, the `-l` list `add_options` kept (empty without `-l`).
    The Python API (`ocrmypdf.ocr(...)` or an `OcrOptions`), where no parser ran and
    `given` is None: whether `languages` was given, as pydantic records it
    (`model_fields_set`). OCRmyPDF 17's
    plugin interface says neither outright; should a later OCRmyPDF copy the list,
    a language other than the default still counts as named.
    """
    if given is None:
        named = "languages" in options.model_fields_set
    else:
        named = bool(given) or list(options.languages) != _DEFAULT_LANGUAGES
    return "+".join(options.languages) if named else "auto"


def _ocrmypdf_error(exc: QueueError) -> Exception:
    """OCRmyPDF's own exception for a failure, with a one-line message."""
    message = " ".join(f"ocr-queue: {exc}".split())
    if isinstance(exc, Refused):
        return BadArgsError(message)
    if isinstance(exc, Unreachable):
        return MissingDependencyError(message)
    return SubprocessOutputError(message)


@hookimpl
def check_options(options: Any) -> None:
    """Before any page: the options, the languages, and the service answering."""
    lang = _lang(options, options.extra_attrs.pop("ocr_queue_languages_given", None))
    if not _active(options):
        return
    deadline = _option(options, "ocr_queue_page_deadline") or DEFAULT_PAGE_DEADLINE
    if float(deadline) <= 0:
        raise BadArgsError("ocr-queue: --ocr-queue-page-deadline must be above 0")
    if getattr(options, "pdf_renderer", "auto") == "sandwich":
        raise BadArgsError(SANDWICH)
    options.extra_attrs["ocr_queue_lang"] = lang
    try:
        service = _service(options)
        try:
            service.check(_option(options, "ocr_queue_engine"))
        finally:
            service.close()
    except QueueError as exc:
        raise _ocrmypdf_error(exc) from None


def _job(options: Any, output: str) -> PageJob:
    return PageJob(output=output, lang=_option(options, "ocr_queue_lang") or "auto",
                   engine=_option(options, "ocr_queue_engine"),
                   deadline=float(_option(options, "ocr_queue_page_deadline")
                                  or DEFAULT_PAGE_DEADLINE))


def _read(input_file: Path, options: Any, output: str) -> PageRead:
    try:
        service = _service(options)  # one a page: safe in OCRmyPDF's threads too
        try:
            return service.read(Path(input_file), _job(options, output))
        finally:
            service.close()
    except PageFailed as exc:
        raise _ocrmypdf_error(PageFailed(f"{page_label(Path(input_file))}: {exc}")) from None
    except QueueError as exc:
        raise _ocrmypdf_error(exc) from None


def _write(path: Path, data: bytes) -> None:
    """`data` at `path`, whole or not at all (a temporary file renamed into place)."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        shutil.move(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class OcrQueueEngine(OcrEngine):
    """OCRmyPDF's OCR engine: each page one job of the OCR job queue."""

    @staticmethod
    def version() -> str:
        return __version__

    @staticmethod
    def creator_tag(options: Any) -> str:
        engine = _option(options, "ocr_queue_engine") or "its routing"
        return f"ocr-queue {__version__} (engine: {engine})"

    def __str__(self) -> str:
        return f"ocr-queue {__version__}"

    @staticmethod
    def languages(options: Any) -> set[str]:
        # Empty: OCRmyPDF checks no language itself; the service refuses one its
        # workers lack (language_unavailable), as a failed page.
        return set()

    @staticmethod
    def get_orientation(input_file: Path, options: Any) -> OrientationConfidence:
        """The rotation the service's own orientation check turns the page by.

        One more job (output=text) on OCRmyPDF's preview image, only with
        `--rotate-pages`. The service's rotation is tesseract's `orient_deg`, which is
        also what OCRmyPDF's own tesseract engine reports as the angle.
        """
        read = _read(input_file, options, "text")
        return OrientationConfidence(angle=read.rotation % 360,
                                     confidence=SURE if read.rotation else 0.0)

    @staticmethod
    def get_deskew(input_file: Path, options: Any) -> float:
        return 0.0  # the service deskews what it reads and maps the boxes back

    @staticmethod
    def generate_hocr(input_file: Path, output_hocr: Path, output_text: Path,
                      options: Any) -> None:
        """One job (output=hocr); its hOCR and text written whole, or nothing."""
        read = _read(input_file, options, "hocr")
        if read.hocr is None:
            raise SubprocessOutputError(f"ocr-queue: {page_label(Path(input_file))}: the "
                                        "service returned no hOCR")
        _write(Path(output_hocr), fitted_hocr(read.hocr, Path(input_file)))
        _write(Path(output_text), read.text.encode("utf-8"))

    @staticmethod
    def generate_pdf(input_file: Path, output_pdf: Path, output_text: Path,
                     options: Any) -> None:
        raise BadArgsError(SANDWICH)


@hookimpl
def get_ocr_engine(options: Any) -> OcrEngine | None:
    """The queue engine when a service URL is set and `--ocr-engine` is auto; else None."""
    return OcrQueueEngine() if _active(options) else None
