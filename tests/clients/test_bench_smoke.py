"""Smoke test of the benchmark harness: `python -m bench --quick --only overhead`.

`make test` installs what it needs (matplotlib and psutil are in requirements-dev.txt);
the rest of requirements-bench.txt (OCRmyPDF, py-spy) is not used here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import ROOT, corpus

pytestmark = pytest.mark.slow


def test_quick_overhead_benchmark_writes_table_json_and_plot(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "overhead",
                           "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "submit -> result (client)" in done.stdout
    assert "latency p50 / engine p50" in done.stdout
    report = json.loads((tmp_path / "overhead.json").read_text())
    assert report["quick"] is True
    assert report["machine"]["cpu_count"] >= 1
    assert report["data"]["stats"]["submit -> result (client)"]["n"] == 15
    assert (tmp_path / "overhead.png").stat().st_size > 0


def test_quick_vlm_benchmark_measures_budget_and_loop(tmp_path: Path) -> None:
    """`python -m bench --quick --only vlm`: the page budget and the loop guard, measured."""
    corpus("scan_linn.png")  # the page the benchmark sends (skips without the corpus)
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "vlm",
                           "--results", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((tmp_path / "vlm.json").read_text())
    small, large = report["data"]["pages"]
    assert max(small["image_size"]) == 448 and max(large["image_size"]) == 896
    assert large["prompt_tokens"] > small["prompt_tokens"]
    guarded, unguarded = report["data"]["loops"]
    assert guarded["finish_reason"] == "repetition" and unguarded["finish_reason"] == "length"
    assert guarded["generation_tokens"] < unguarded["generation_tokens"] == 512
