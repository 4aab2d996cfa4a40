"""The options of a job sent from the command line: `submit.py submit`'s and shared ones.

Runs in `submit.py` (a user's machine): `submit_arguments` adds the options of `submit`
(files, engine, escalation, pages, output, language, mode, cache, callbacks, result URL) and
`add_job_options` those every command that sends jobs takes (priority, deadline).
"""

from __future__ import annotations

import argparse

from tasks.queue.routing import PRIORITIES
from tasks.records.engines import ENGINES, VLM_ENGINES
from tasks.records.request import OUTPUT_CHOICES


def submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE",
                        help="a local file, or an s3://bucket/key or https:// URL the "
                             "workers read themselves (under their OCR_ALLOWED_URLS)")
    parser.add_argument("--no-wait", action="store_true",
                        help="print each job's id and file name, and return")
    parser.add_argument("--engine", help=f"{', '.join(ENGINES)} (default: the worker's, "
                        "or by `--lang` as OCR_LANG_ENGINES says)")
    parser.add_argument("--escalate", metavar="ENGINE", choices=VLM_ENGINES,
                        help=f"{' or '.join(VLM_ENGINES)}: read again the pages the engine "
                        "is unsure of (default: the fleet's OCR_ESCALATE_ENGINE)")
    parser.add_argument("--escalate-below", type=fraction, metavar="X",
                        help="escalate a page whose mean word confidence (0 to 1) is "
                             "below X, or that has no text and is not blank (default: "
                             "OCR_ESCALATE_BELOW; 0: none, 1: every OCR'd page)")
    parser.add_argument("--pages", help='pages to read, e.g. "1-3,7" (--output pdf keeps '
                        'every page of the input, with a text layer on those read)')
    parser.add_argument("--password", help="password of an encrypted PDF")
    parser.add_argument("--output", choices=OUTPUT_CHOICES, default="text",
                        help="pdf, hocr and alto also store a file (--out DIR writes "
                             "NAME.ocr.pdf, NAME.hocr, NAME.alto.xml)")
    parser.add_argument("--lang", help="tesseract language(s) of the pages, e.g. vie, "
                                       "chi_sim, ell+eng, or auto: each page in the "
                                       "languages of its own script (default: the "
                                       "worker's OCR_LANG, auto unless set; see langs)")
    parser.add_argument("--mode", choices=("auto", "ocr", "text"), default=None,
                        help="PDFs: text layer where present (auto), OCR always, text only")
    parser.add_argument("--no-cache", action="store_true",
                        help="read afresh: not answered from the result cache (the new "
                             "result replaces the cached one)")
    add_job_options(parser)
    parser.add_argument("--callback-task", help="Celery task (by name) that gets the result")
    parser.add_argument("--callback-queue", help="queue of --callback-task")
    parser.add_argument("--callback-url", help="http(s) URL the result summary is POSTed to")
    parser.add_argument("--result-url", metavar="S3_URL",
                        help="s3://bucket/prefix/ (or an object key) the workers write the "
                             "result to, in --output's format; the result names the object")


def fraction(raw: str) -> float:
    """`--escalate-below`'s value: a number from 0 to 1."""
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a number") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{raw} is not from 0 to 1")
    return value


def add_job_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--priority", choices=tuple(PRIORITIES),
                        help="interactive jobs go before normal (default) and batch ones")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="not started within SECONDS: never started; running past "
                             "it: stops, keeping the pages done (deadline_exceeded)")
