"""Every host audited: two workers with different host names and model directories.

Real redis-server, real workers started as the Procfile starts them. The host part of a
node name (`WORKER_NAME=wa@host-a` gives `wa@host-a@<machine>`) stands in for a
machine, as in tests/queue/test_multiworker.py. Each directory is a Hugging Face hub cache
built offline in the real layout (tests/model_dirs.py) beside a flat folder; the fake
`fake-model` engine loads its model by repo id `org/name` from it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tasks.client import OcrClient
from tasks.queue.celery_config import celery_config
from tasks.settings import Settings
from tests.harness import FAKE_PLUGINS, Worker, eventually, kill_all
from tests.model_dirs import DAY, age, model_files, write_hub_repo, write_model
from tests.queue.test_queue import submit_cli

FAKE_ENV = {"OCR_ENGINE_PLUGINS": FAKE_PLUGINS, "OCR_CACHE_RESULTS": "0",
            "OCR_ENGINE": "fake-model", "OCR_CONCURRENCY": "1",
            "OCR_RETIRED_MODELS": "org/retired", "OCR_PRUNE_UNUSED_DAYS": "2",
            "OCR_MODEL_HEARTBEAT_SECONDS": "0.5"}
MAIN, OLD = "1" * 40, "2" * 40


def _cache(root: Path, own: str, others: tuple[str, ...] = ()) -> Path:
    """A hub cache of one host.

    The host's configured repo `own` (with a detached old revision and a stale
    `.incomplete` blob), a retired repo, an unused repo, an `old_` flat folder, and
    `others`: unused here, but another host's configured model.
    """
    write_hub_repo(root, own, {MAIN: model_files(), OLD: model_files(tensors={"w": [2]})},
                   refs={"main": MAIN}, incomplete={"stale": b"partial"})
    write_hub_repo(root, "org/retired", {MAIN: model_files()})
    write_hub_repo(root, "org/unused", {MAIN: model_files()})
    write_model(root / "old_flat")
    for name in others:
        write_hub_repo(root, name, {MAIN: model_files()})
    for name in (own, "org/unused", *others):  # past the grace and the unused days
        age(root / f"models--{name.replace('/', '--')}", 3 * DAY)
    return root


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory,
          start_worker: Callable[..., Worker]) -> dict[str, tuple[Worker, Path]]:
    root = tmp_path_factory.mktemp("hosts")
    a = _cache(root / "a", "org/model-a", others=("org/model-b",))
    b = _cache(root / "b", "org/model-b")
    # host-b unloads its model when idle: the configured registration must protect it
    wa = start_worker(**FAKE_ENV, WORKER_NAME="wa@host-a", OCR_MODEL_DIR=str(a),
                      OCR_MODEL="org/model-a")
    wb = start_worker(**FAKE_ENV, WORKER_NAME="wb@host-b", OCR_MODEL_DIR=str(b),
                      OCR_MODEL="org/model-b", OCR_IDLE_UNLOAD_SECONDS="0.5")
    return {"a": (wa, a), "b": (wb, b)}


def _node(worker: Worker) -> str:
    found = re.search(r"(\S+@\S+) ready\.", worker.log())
    assert found
    return found.group(1)


def _after(hosts: dict[str, tuple[Worker, Path]], key: str) -> None:
    """What one scheduled prune leaves in a host's directory."""
    _, cache = hosts[key]
    own = cache / f"models--org--model-{key}"
    kept = [".locks", own.name, *(["models--org--model-b"] if key == "a" else [])]
    assert sorted(os.listdir(cache)) == kept  # retired, unused, old_ gone
    assert sorted(os.listdir(own / "snapshots")) == [MAIN]  # the detached revision went
    assert not (own / "blobs" / "stale.incomplete").exists()  # the repo stayed
    assert (own / "snapshots" / MAIN / "config.json").is_file()
    assert (own / "refs" / "main").read_text() == MAIN


def test_one_scheduled_run_audits_and_prunes_every_host(
        hosts: dict[str, tuple[Worker, Path]], client: OcrClient) -> None:
    wb = hosts["b"][0]
    # host-b's model was loaded at start and released since: only configured now
    eventually(lambda: "engines released (idle)" in wb.log(), 20,
               lambda: f"host-b's idle release:\n{wb.log()[-2000:]}")

    entry = celery_config(Settings.from_env({}))["beat_schedule"]["ocr-audit-models"]
    sent = client.app.send_task(entry["task"], kwargs=entry["kwargs"], **entry["options"])
    dispatch = client.wait([sent.id], timeout=60)[sent.id]
    assert sorted(t["node"] for t in dispatch["dispatched"]) == \
        sorted(_node(w) for w, _ in hosts.values())
    copies = client.wait([t["task_id"] for t in dispatch["dispatched"]], timeout=60)
    reports = {r["host"].split("@")[0]: r for r in copies.values()}
    assert sorted(reports) == ["host-a", "host-b"]
    for key in ("a", "b"):
        report = reports[f"host-{key}"]
        worker, cache = hosts[key]
        assert report["mode"] == "prune" and report["errors"] == [], report
        assert report["model_dir"] == str(cache.resolve())
        assert report["worker"] == _node(worker) and report["run"] == dispatch["run"]
        pruned = {(p["name"], p["scope"]): p["reasons"] for p in report["pruned"]}
        assert pruned == {
            ("org/retired", "entry"): ["retired"],
            ("org/unused", "entry"): ["unused"],
            ("old_flat", "entry"): ["prefix"],
            (f"org/model-{key}", "incomplete"): ["stale_incomplete"],
            (f"org/model-{key}", "revisions"): ["detached"]}
        status = {m["name"]: m["status"] for m in report["models"]}
        assert status[f"org/model-{key}"] == "CURRENT"
        _after(hosts, key)
    # on host-a, org/model-b is unused for days and nobody has it loaded (host-b released
    # it when idle): only host-b's configured-model registration keeps it
    b_on_a = next(m for m in reports["host-a"]["models"] if m["name"] == "org/model-b")
    assert b_on_a["loaded_by"] == [] and b_on_a["configured_by"] == [_node(wb)]
    kept = next(k for k in reports["host-a"]["kept"]
                if k["name"] == "org/model-b" and k["scope"] == "entry")
    assert kept["reasons"] == ["current_model"] and kept["matched"] == ["unused"]


def test_submit_models_shows_one_table_per_host(hosts: dict[str, tuple[Worker, Path]],
                                                redis_url: str) -> None:
    done = submit_cli(redis_url, "models", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert sorted(r["model_dir"] for r in result["hosts"]) == \
        sorted(str(c.resolve()) for _, c in hosts.values())
    table = submit_cli(redis_url, "models")
    assert table.returncode == 0, table.stderr
    headers = re.findall(r"^== (\S+): (\S+) \(audited by (\S+)\)$", table.stdout, re.M)
    assert sorted(h[0].split("@")[0] for h in headers) == ["host-a", "host-b"]
    assert re.search(r"^org/model-a\s+CURRENT\s+hub \(qwen2_vl\), 1 rev, main=11111111",
                     table.stdout, re.M)


def test_fresh_tesseract_only_setup_has_nothing_to_audit(
        start_worker: Callable[..., Worker], tmp_path: Path, redis_url: str,
        hosts: dict[str, tuple[Worker, Path]]) -> None:
    """No model directory and no OCR_MODEL: said so, exit 0 (the other hosts audit too)."""
    missing = tmp_path / "no-models"
    worker = start_worker(WORKER_NAME="fresh@host-c", OCR_MODEL_DIR=str(missing),
                          OCR_ENGINE="tesseract", OCR_CONCURRENCY="1")
    try:
        done = submit_cli(redis_url, "models")
        assert done.returncode == 0, done.stdout + done.stderr
        assert re.search(rf"^== host-c@\S+: {re.escape(str(missing))} .*\n.*"
                         r"no model directory and no OCR_MODEL, nothing to audit",
                         done.stdout, re.M), done.stdout
        result: dict[str, Any] = json.loads(submit_cli(redis_url, "models", "--json").stdout)
        fresh = next(r for r in result["hosts"] if r["host"].startswith("host-c@"))
        assert fresh["errors"] == [] and fresh["models"] == []
    finally:
        kill_all([worker])  # nothing waits on its warm shutdown
