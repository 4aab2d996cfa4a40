# ruff: noqa: F811  (the metrics exporter's fixture of test_monitoring.py is imported by name)
"""The golden set scored now and nightly, exported, and its alert.

`ocr_admin.py accuracy --run` and beat's scheduled audit score it; the exporter gives
`ocr_golden_cer{engine,model}`; the alert fires on a run that reads worse.

A real tesseract worker (which serves rapidocr's queue too) with OCR_GOLDEN_SET, the
Procfile `metrics` process, `ocr_admin.py` as a subprocess, and promtool on the
scraped figures.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tasks.client import OcrClient
from tasks.state.connection import connect
from tasks.state.golden import GoldenStore
from tests.deploy.test_monitoring import (  # noqa: F401 - the metrics exporter's fixture
    RULES,
    _get,
    exporter,
    promtool,
)
from tests.harness import ROOT, Worker, corpus, eventually

pytestmark = pytest.mark.slow

WRONG = "Nothing of this is on the page at all, not one word of it."


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("golden")
    shutil.copy(corpus("scan_tess_phototest.tif"), folder / "phototest.tif")
    shutil.copy(corpus("scan_tess_phototest.gt.txt"), folder / "phototest.gt.txt")
    return folder


@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker], golden: Path) -> Worker:
    """The OCR worker, and the control worker that sends each job's `ocr.golden_score`."""
    start_worker("control", OCR_GOLDEN_SET=str(golden))
    return start_worker(OCR_CONCURRENCY="1", OCR_GOLDEN_SET=str(golden))


def admin(redis_url: str, golden: Path, *words: str,
          **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "ocr_admin.py", "accuracy", *words], cwd=ROOT,
                          env={**os.environ, "REDIS_URL": redis_url,
                               "OCR_GOLDEN_SET": str(golden), **env},
                          capture_output=True, text=True, timeout=600)


def gauges(text: str, name: str) -> dict[tuple[str, str], float]:
    return {(s.labels["engine"], s.labels["model"]): s.value
            for family in text_string_to_metric_families(text) if family.name == name
            for s in family.samples}


def alert(engine: str, model: str, worse: float) -> dict[str, object]:
    """The alert promtool must see for an engine whose CER rose by `worse`."""
    return {"exp_labels": {"severity": "warning", "engine": engine, "model": model},
            "exp_annotations": {
                "summary": f"{engine} ({model}) reads the golden set worse than its run "
                           "before",
                "description": f"The last golden-set run's error rate of {engine} is "
                               f"{worse:.3f} above its run before (the margins: CER up by "
                               "more than 0.02, WER by more than 0.05): a model, engine or "
                               "release reads the golden set worse.",
                "runbook": "docs/operations.md#ocrgoldenaccuracyworse"}}


def test_a_run_now_then_the_nightly_one_then_the_metric_and_its_alert(
        worker: Worker, exporter: str, client: OcrClient, redis_url: str, golden: Path,
        tmp_path: Path) -> None:
    # before any run: the families are declared, empty
    assert gauges(_get(f"{exporter}/metrics") or "", "ocr_golden_cer") == {}
    done = admin(redis_url, golden, "--run", "--json")
    assert done.returncode == 0, done.stderr
    first = [json.loads(line) for line in done.stdout.splitlines()]
    assert sorted(r["engine"] for r in first) == ["rapidocr", "tesseract"]
    tesseract = next(r for r in first if r["engine"] == "tesseract")
    assert tesseract["cer"] <= 0.02 and tesseract["documents"] == 1
    assert tesseract["release"] == "0.1.0" and tesseract["model"]

    # the set's truth goes wrong: beat's scheduled audit scores it worse
    (golden / "phototest.gt.txt").write_text(WRONG)
    sent = client.app.send_task("ocr.audit_models", kwargs={"scheduled": True})
    report = sent.get(timeout=120)
    assert report["golden"]["engines"] == ["tesseract", "rapidocr"], report
    store = GoldenStore(connect(client.settings.redis_target))

    def both() -> list[dict[str, object]] | None:
        found = store.history()
        return found if len(found) == 4 else None

    history = eventually(both, 300, "the scheduled run's two records")
    assert {r["run"] for r in history[:2]} == {report["golden"]["run"]}
    shown = admin(redis_url, golden)
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 4
    assert "tesseract" in shown.stdout and "CER" in shown.stdout

    scraped = _get(f"{exporter}/metrics") or ""
    last, before = gauges(scraped, "ocr_golden_cer"), gauges(scraped, "ocr_golden_previous_cer")
    key = ("tesseract", tesseract["model"])
    assert before[key] == pytest.approx(tesseract["cer"])
    assert last[key] >= 0.6 and last[key] - before[key] > 0.02

    # the alert rule on those very figures: it fires for tesseract
    series = [{"series": f'{name}{{engine="{engine}", model="{model}", instance="a"}}',
               "values": f"{value}x10"}
              for name in ("ocr_golden_cer", "ocr_golden_previous_cer", "ocr_golden_wer",
                           "ocr_golden_previous_wer")
              for (engine, model), value in gauges(scraped, name).items()]
    (tmp_path / "rules.yaml").write_text(RULES.read_text())
    (tmp_path / "t.yaml").write_text(yaml.safe_dump({
        "rule_files": ["rules.yaml"], "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": series, "alert_rule_test": [{
            "eval_time": "2m", "alertname": "OcrGoldenAccuracyWorse",
            "exp_alerts": [alert(e, m, last[(e, m)] - before[(e, m)])
                           for (e, m) in sorted(last) if last[(e, m)] - before[(e, m)]
                           > 0.02]}]}]}))
    tested = promtool("test", "rules", "t.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
