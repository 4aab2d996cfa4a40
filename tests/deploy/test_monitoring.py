"""The alert rules, the dashboard, and the figures they read, against the real exporter.

`promtool` (Debian's `prometheus` package, installed by `make test`) checks
deploy/prometheus/rules.yaml and runs its unit tests (rules_test.yaml); every alert
has a case where it fires and one where it stays quiet; the Kubernetes kit's
PrometheusRule carries the same groups. Every expression of the Grafana dashboard
(deploy/grafana/ocr-queue.json) parses (promtool again, as recording rules), and every
metric it or a rule names is one the Procfile's `metrics` exporter really serves:
the exporter runs against a real Redis beside a real worker (fake engine, two
children) that read jobs, and the histograms it serves count them.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tasks.client import OcrClient
from tests.deploy.test_deploy_manifests import DEPLOY
from tests.harness import (
    FAST_PAGES,
    ROOT,
    ProcfileProcess,
    Worker,
    eventually,
    fake_env,
    free_port,
)
from tests.image_fixtures import png
from tests.kustomize_lite import build
from tests.pdf_fixtures import image_pdf, plain_pages

RULES = ROOT / "deploy" / "prometheus" / "rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "rules_test.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ocr-queue.json"
# PromQL words that are not metric names: keywords, and what grouping lists name.
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: `make test` installs Debian's prometheus "
                    "package (apt-get install prometheus)")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (not its functions, labels or words)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = GROUPING.sub("", text)
    names = set()
    for found in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", text):  # not 1e3
        rest = text[found.end():].lstrip()
        if not rest.startswith("(") and found.group().lower() not in KEYWORDS:
            names.add(found.group())
    return names


def test_metric_names_are_told_from_the_rest_of_an_expression() -> None:
    assert metric_names('histogram_quantile(0.95, sum by (le, engine) (max by (le) ('
                        'rate(ocr_page_latency_seconds_bucket{engine!="x"}[5m]))))') == {
        "ocr_page_latency_seconds_bucket"}
    assert metric_names("max by (queue) (a_total) > 0 and on (queue) b == 0") == {
        "a_total", "b"}
    assert metric_names('time() - max(ocr_x{q="by (z)"}) > 1e3') == {"ocr_x"}


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [t["expr"] for p in panels for t in p.get("targets", [])]


def test_the_rules_pass_promtool_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=RULE_TESTS.parent)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_quiet() -> None:
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    for rule in rules():
        mine = [case for case in cases if case["alertname"] == rule["alert"]]
        assert any(case["exp_alerts"] for case in mine), f"{rule['alert']} never fires"
        assert any(not case["exp_alerts"] for case in mine), f"{rule['alert']} never quiet"
        # Its runbook: the section of docs/operations.md named after it.
        assert rule["annotations"]["runbook"] == f"docs/operations.md#{rule['alert'].lower()}"
        assert f"\n#### {rule['alert']}\n" in (ROOT / "docs" / "operations.md").read_text()


def test_a_failing_rule_test_fails(tmp_path: Path) -> None:
    """The control: a unit test expecting the wrong labels makes promtool fail."""
    (tmp_path / "rules.yaml").write_text(RULES.read_text())
    (tmp_path / "t.yaml").write_text(RULE_TESTS.read_text().replace(
        "{severity: critical, queue: ocr}", "{severity: warning, queue: ocr}", 1))
    assert promtool("test", "rules", "t.yaml", cwd=tmp_path).returncode != 0


def test_the_kubernetes_kit_carries_the_same_rules() -> None:
    objects = build(DEPLOY / "monitoring")
    kinds = {o["kind"]: o for o in objects}
    assert set(kinds) == {"PrometheusRule", "ServiceMonitor"}
    rule = kinds["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["metadata"]["namespace"] == "ocr"
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    # The monitor selects the exporter's Service of the base, by its port's name.
    service = next(o for o in build(DEPLOY / "base")
                   if o["kind"] == "Service" and o["metadata"]["name"] == "ocr-metrics")
    monitor = kinds["ServiceMonitor"]["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["endpoints"]} <= {
        p["name"] for p in service["spec"]["ports"]}


def test_every_dashboard_expression_parses(tmp_path: Path) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 15
    recording = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": expr} for i, expr in enumerate(exprs)]}]}
    (tmp_path / "dashboard.yaml").write_text(yaml.safe_dump(recording))
    checked = promtool("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The control: a broken expression is refused the same way.
    recording["groups"][0]["rules"][0]["expr"] = "sum by (le (ocr_jobs_total)"
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(recording))
    assert promtool("check", "rules", str(tmp_path / "broken.yaml")).returncode != 0


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "ocr-queue"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
    titles = {p["title"] for p in board["panels"]}
    for wanted in ("Pages/s by engine", "Pages/s by client", "Queue depth",
                   "Oldest waiting message", "Job latency (accepted to ended)",
                   "Page latency by engine (p95)",
                   "Failures by code", "Worker memory", "Inference server: pages in flight"):
        assert wanted in titles
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
            assert all(t["refId"] and t["expr"] for t in panel["targets"])


def test_the_dashboard_shows_the_escalated_share() -> None:
    """The escalated pages over the OCR'd ones (docs/escalation.md)."""
    panels = {p["title"]: p for p in json.loads(DASHBOARD.read_text())["panels"]}
    share = panels["Escalated share of OCR'd pages"]
    assert share["fieldConfig"]["defaults"]["unit"] == "percentunit"
    for target in share["targets"]:
        assert metric_names(target["expr"]) == {"ocr_pages_escalated_total", "ocr_pages_total"}
        assert 'source="ocr"' in target["expr"]


# --- the exporter, serving what a worker recorded --------------------------------------

@pytest.fixture(scope="module")
def worker(start_worker: Callable[..., Worker]) -> Worker:
    return start_worker(**fake_env(OCR_CONCURRENCY="2", **FAST_PAGES))


@pytest.fixture(scope="module")
def exporter(worker: Worker, redis_url: str,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Procfile `metrics` process; yields its base URL."""
    port = free_port()
    process = ProcfileProcess("metrics", tmp_path_factory.mktemp("metrics") / "m.log", {
        "REDIS_URL": redis_url, "METRICS_PORT": str(port)})
    process.spawn()
    url = f"http://127.0.0.1:{port}"
    try:
        process.wait_until(lambda: _get(f"{url}/metrics") is not None, 30, "serving")
        yield url
    finally:
        process.stop()


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def served(text: str) -> set[str]:
    """Every sample name the exposition declares (a family's, with its type's suffixes)."""
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total", "_created"), "histogram": (
            "_bucket", "_sum", "_count", "_created")}.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


@pytest.fixture(scope="module")
def scraped(exporter: str, worker: Worker, client: OcrClient) -> str:
    jobs = [client.submit(png(60)), client.submit(image_pdf(plain_pages(3)), filename="p.pdf"),
            client.submit(b"not an image", filename="junk.bin")]
    results = client.wait(jobs, timeout=120)
    assert [results[j]["status"] for j in jobs] == ["SUCCESS", "SUCCESS", "FAILURE"]
    worker.job_records(jobs)  # every ending has counted its job

    def counted() -> str | None:
        text = _get(f"{exporter}/metrics") or ""
        jobs, pages = (sum(float(n) for n in re.findall(
            rf"^ocr_{kind}_latency_seconds_count\{{.*\}} (\S+)$", text, re.M))
            for kind in ("job", "page"))
        return text if (jobs, pages) == (3, 4) else None  # counts written within a second

    return eventually(counted, 30, lambda: _get(f"{exporter}/metrics") or "no answer")


def test_the_dashboard_and_the_rules_name_only_served_metrics(scraped: str) -> None:
    names = served(scraped)
    assert {"ocr_jobs_total", "ocr_job_latency_seconds_bucket", "ocr_queue_oldest_age_seconds",
            "ocr_redis_up", "ocr_dead_letters_total"} <= names
    for expr in dashboard_exprs() + [rule["expr"] for rule in rules()]:
        assert metric_names(expr) <= names, (expr, metric_names(expr) - names)


def test_the_histograms_count_the_jobs_and_pages_read(scraped: str) -> None:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(scraped):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    jobs = {(s[0]["engine"], s[0]["outcome"]): s[1]
            for s in samples["ocr_job_latency_seconds_count"]}
    assert jobs == {("fake", "SUCCESS"): 2.0, ("fake", "FAILURE"): 1.0}
    pages = sum(v for labels, v in samples["ocr_page_latency_seconds_count"]
                if labels["engine"] == "fake")
    assert pages == 4.0  # the image and the PDF's three pages
    buckets = [(float(labels["le"]), v) for labels, v in samples["ocr_page_latency_seconds_bucket"]
               if labels["engine"] == "fake"]
    assert buckets == sorted(buckets) and buckets[-1] == (float("inf"), 4.0)
    assert {0.3, 30.0} <= {le for le, _ in buckets}  # a scan's and a VLM page's scale
    assert [s[1] for s in samples["ocr_job_failures_total"]] == [1.0]
    assert samples["ocr_job_failures_total"][0][0]["code"] == "unsupported_format"
    assert {s[0]["redis"]: s[1] for s in samples["ocr_redis_up"]} == {"store": 1.0}
    workers = {s[0]["queue"]: s[1] for s in samples["ocr_queue_workers"]}
    assert workers["ocr"] == 1.0 and workers["ocr-control"] == 1.0
    assert {s[0]["queue"]: s[1] for s in samples["ocr_queue_oldest_age_seconds"]}["ocr"] == 0.0
