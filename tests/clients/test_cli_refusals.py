"""`submit.py`'s door for languages and page selections: refused before sending, or told.

A real redis-server and a real worker with the fake engine (tests/harness.py): what is
tested is what the command line sends and says, not how pages are read.
`--lang klingon` (no tesseract code, and no live worker reads it) exits 2 with nothing
sent; a page number no document has is a bound error; a range past the document's last
page is read as far as the document goes, with a warning naming it.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.harness import FAST_PAGES, Worker, corpus, fake_env
from tests.queue.test_queue import submit_cli
from tests.tessdata_sets import lacking


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**fake_env(**FAST_PAGES))


def door_keys(store: redis.Redis) -> set[bytes]:
    """What a sent job leaves in Redis: inputs, job records, queues and their bindings."""
    return {k for pattern in ("ocr:blob:*", "ocr:job:*", "ocr-*", "_kombu.binding.ocr-*")
            for k in store.keys(pattern)}


def test_an_unknown_language_is_refused_with_nothing_sent(worker: Worker,
                                                          redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    done = submit_cli(redis_url, "--lang", "klingon", str(corpus("scan_linn.png")))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert "unknown_language" in line and "'klingon'" in line and "nothing was sent" in line
    mixed = submit_cli(redis_url, "--lang", "eng+klingon", str(corpus("scan_linn.png")))
    assert mixed.returncode == 2 and "'klingon'" in mixed.stderr, mixed.stderr
    assert door_keys(store) == before


def test_a_language_no_live_worker_has_is_refused_naming_how_to_add_it(
        worker: Worker, start_worker: Callable[..., Worker], redis_url: str) -> None:
    """A tesseract worker's presence names its languages: the door refuses the others.

    `--lang de` asks whether `deu` was meant; a real code this host has no traineddata
    for is `language_unavailable` at the door (not a job failing on the worker), naming
    the OCR_LANGS that adds it. The tesseract worker alone consumes `ocr-tesseract`.
    """
    absent = lacking(["yor", "tir", "sun", "oci", "iku"])
    if not absent:
        pytest.skip("this host has traineddata for every language the test would ask")
    start_worker(OCR_QUEUES="ocr-tesseract")
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    page = str(corpus("scan_linn.png"))
    done = submit_cli(redis_url, "--lang", "de", page)
    assert done.returncode == 2, done.stderr
    assert "unknown_language" in done.stderr and "did you mean 'deu'?" in done.stderr
    done = submit_cli(redis_url, "--engine", "tesseract", "--lang", absent[0], page)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(f"submit.py: language_unavailable: no live worker reads "
                           f'{absent[0]}: add {absent[0]} where the workers run: '
                           f'OCR_LANGS="eng {absent[0]}" make run'), line
    assert door_keys(store) == before
    sent = submit_cli(redis_url, "--engine", "tesseract", "--lang", "eng", page)
    assert sent.returncode == 0 and "LinnSequencer" in sent.stdout, sent.stderr


def test_a_batch_naming_an_unknown_language_is_refused_by_the_same_gate(
        worker: Worker, redis_url: str, tmp_path: Path) -> None:
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(corpus("scan_linn.png"), folder)
    done = submit_cli(redis_url, "batch", str(folder), "--result-url", str(tmp_path / "out"),
                      "--lang", "klingon")
    assert done.returncode == 2, done.stderr
    assert "unknown_language" in done.stderr and "'klingon'" in done.stderr, done.stderr
    assert door_keys(store) == before


def test_a_page_number_past_any_document_is_a_bound_error(worker: Worker,
                                                          redis_url: str) -> None:
    store = redis.Redis.from_url(redis_url)
    before = door_keys(store)
    done = submit_cli(redis_url, "--pages", "99999999999999999999",
                      str(corpus("scan_linn.png")))
    assert done.returncode == 2, done.stderr
    assert "invalid_pages" in done.stderr and "page numbers go up to" in done.stderr
    assert "9223372036854775807" not in done.stderr
    assert door_keys(store) == before


def test_a_range_past_the_last_page_is_read_with_a_warning(worker: Worker,
                                                           redis_url: str) -> None:
    done = submit_cli(redis_url, "--pages", "1-99999999", str(corpus("scan_linn.png")))
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "scan_linn.png" in warnings[0], done.stderr
    assert "--pages 1-99999999 goes past the document's last page (1)" in warnings[0]
    plain = submit_cli(redis_url, "--pages", "1", str(corpus("scan_linn.png")))
    assert plain.returncode == 0 and "warning" not in plain.stderr, plain.stderr
    # a range for several files is for those that have its pages: the README's example
    files = [str(corpus("dig_multicolumn_3p.pdf")), str(corpus("scan_linn.png"))]
    several = submit_cli(redis_url, "--json", "--pages", "1-2", *files)
    assert several.returncode == 0 and "warning" not in several.stderr, several.stderr
    past = submit_cli(redis_url, "--json", "--pages", "1-5", *files)  # no file has page 5
    assert past.returncode == 0, past.stderr
    assert [line.split(":")[0] for line in past.stderr.splitlines() if "warning" in line] \
        == ["dig_multicolumn_3p.pdf", "scan_linn.png"], past.stderr
