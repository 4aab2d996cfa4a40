"""`submit.py eval`: a folder with ground truth scored through a real tesseract worker.

One worker for the module; `submit.py` runs as a subprocess, as a user runs it.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness import ROOT, Worker, corpus, ground_truth

pytestmark = pytest.mark.slow

WRONG = "Nothing here <b>& matches</b> the page\nat all, not even one line."


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(OCR_CONCURRENCY="1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phototest with its truth as PAGE XML; a copy with a wrong truth; one without."""
    here = tmp_path_factory.mktemp("eval")
    shutil.copy(corpus("scan_tess_phototest.tif"), here / "right.tif")
    lines = "".join(f"<TextLine><TextEquiv><Unicode>{html.escape(line)}</Unicode>"
                    "</TextEquiv></TextLine>"
                    for line in ground_truth("scan_tess_phototest.tif").splitlines())
    (here / "right.gt.xml").write_text(
        '<PcGts xmlns="http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15">'
        f"<Page><TextRegion>{lines}</TextRegion></Page></PcGts>")
    shutil.copy(corpus("scan_tess_phototest.tif"), here / "wrong.tif")
    (here / "wrong.gt.txt").write_text(WRONG)
    shutil.copy(corpus("scan_tess_phototest.tif"), here / "no_truth.tif")
    return here


def run_eval(redis_url: str, *words: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "submit.py", "eval", *words], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url}, capture_output=True,
                          text=True, timeout=300)


def test_eval_scores_each_document_and_a_wrong_truth_high(
        worker: Worker, redis_url: str, folder: Path, tmp_path: Path) -> None:
    report = tmp_path / "scores.html"
    done = run_eval(redis_url, str(folder), "--json", "--report", str(report))
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    records, summary = lines[:-1], lines[-1]
    assert [r["document"] for r in records] == ["right.tif", "wrong.tif"]
    for record in records:
        assert set(record) == {"document", "engine", "cer", "wer", "chars", "words",
                               "seconds"}
        assert record["engine"] == "default" and record["seconds"] > 0
    right, wrong = records
    truth = re.sub(r"\s+", " ", ground_truth("scan_tess_phototest.tif")).strip()
    assert (right["chars"], right["words"]) == (len(truth), len(truth.split()))
    assert right["cer"] <= 0.02 and right["wer"] <= 0.1
    assert wrong["cer"] >= 0.6 and wrong["wer"] >= 0.9
    assert set(summary) == {"summary"}
    (engine, total), = summary["summary"].items()
    assert engine == "default"
    assert set(total) == {"cer", "wer", "documents", "chars"}
    assert total["documents"] == 2 and total["chars"] == right["chars"] + wrong["chars"]
    # total edits over total characters: between the two documents' rates
    edits = right["cer"] * right["chars"] + wrong["cer"] * wrong["chars"]
    assert total["cer"] == pytest.approx(edits / total["chars"], abs=1e-5)
    check_report(report.read_text())


def check_report(page: str) -> None:
    """Self-contained, escaped, edits marked, the worst line of a document first."""
    assert not re.search(r"""(src|href)\s*=|<script|@import|url\(""", page)
    assert "<b>" not in page and "&lt;" in page and "&amp;" in page
    sections = page.split("<h2>")[1:]
    right = next(s for s in sections if s.startswith("right.tif"))
    wrong = next(s for s in sections if s.startswith("wrong.tif"))
    assert "<del>" in wrong and "<ins>" in wrong
    for section in (right, wrong):
        rates = [float(x) for x in re.findall(r"<td>([0-9.]+)%</td><td class=\"text\">",
                                              section)]
        assert rates and rates == sorted(rates, reverse=True)
    # a line read right shows its text unmarked
    assert "<td>0.00%</td><td class=\"text\">of file format.</td>" in right


def test_eval_refuses_a_folder_without_truth_and_an_unknown_engine(
        worker: Worker, redis_url: str, tmp_path: Path, folder: Path) -> None:
    shutil.copy(corpus("scan_tess_phototest.tif"), tmp_path / "alone.tif")
    done = run_eval(redis_url, str(tmp_path))
    assert done.returncode == 2 and "no document with ground truth" in done.stderr
    done = run_eval(redis_url, str(folder), "--engine", "nonesuch")
    assert done.returncode == 2 and "unknown_engine" in done.stderr
    assert done.stdout == ""


def test_eval_reads_one_file_with_its_truth_beside_it(
        worker: Worker, redis_url: str, folder: Path, tmp_path: Path) -> None:
    done = run_eval(redis_url, str(folder / "right.tif"), "--json")
    assert done.returncode == 0, done.stderr
    record, summary = (json.loads(line) for line in done.stdout.splitlines())
    assert record["document"] == "right.tif" and record["cer"] <= 0.02
    assert summary["summary"]["default"]["documents"] == 1
    done = run_eval(redis_url, str(folder / "no_truth.tif"))
    assert done.returncode == 2, done.stderr
    assert "no ground truth beside it (no_truth.gt.txt or no_truth.gt.xml" in done.stderr
    done = run_eval(redis_url, str(folder / "wrong.gt.txt"))
    assert done.returncode == 2 and "a ground-truth file" in done.stderr
    done = run_eval(redis_url, str(tmp_path / "absent.png"))
    assert "input_not_found" in done.stderr and "no such file or folder" in done.stderr


def test_a_job_with_ground_truth_carries_its_scores(worker: Worker, redis_url: str) -> None:
    from tasks.errors import BadRequest
    from tasks.evaluation.scoring import score
    from tests.harness import make_client

    client = make_client(redis_url)
    try:
        truth = ground_truth("edge_multiframe_g4.tiff")  # three frames, a word each
        assert truth.count("\f") == 2
        wrong = truth.replace(truth.split("\f")[1].strip(), "Zebra crossing")
        job = client.submit(corpus("edge_multiframe_g4.tiff"), ground_truth=wrong)
        result = client.wait([job], timeout=240)[job]
        assert result["status"] == "SUCCESS", result
        scores = result["scores"]
        pages = scores["pages"]
        assert [p["number"] for p in pages] == [1, 2, 3]
        for page, truth_page in zip(result["pages"], wrong.split("\f"), strict=True):
            expected = score(truth_page, page["text"])
            shown = next(p for p in pages if p["number"] == page["number"])
            assert (shown["cer"], shown["chars"]) == (round(expected.cer, 6), expected.chars)
        assert pages[1]["cer"] >= 0.5 > max(pages[0]["cer"], pages[2]["cer"])
        assert scores["chars"] == sum(p["chars"] for p in pages)
        assert set(scores) == {"cer", "wer", "chars", "words", "pages"}
        plain = client.submit(corpus("edge_multiframe_g4.tiff"))
        assert "scores" not in client.wait([plain], timeout=240)[plain]
        with pytest.raises(BadRequest):
            client.submit(corpus("edge_multiframe_g4.tiff"), ground_truth=3)
    finally:
        client.close()
