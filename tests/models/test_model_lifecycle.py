"""Model lifecycle through a real redis-server and real workers started from the Procfile.

The audit runs in a real worker (`ocr.audit_models` on queue `ocr`) over a model
directory with current, `old_`, unused, broken, partial, in-use and linked entries; a
second worker holds `old_in_use` loaded (fake engine that loads from OCR_MODEL_DIR) and
registers it in Redis. Release: the remote-control command, idle release, shutdown.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from tasks.client import OcrClient
from tasks.models.registry import LOADED_PREFIX, SCHEDULED_KEY, ModelRegistry
from tasks.operator_console import OperatorConsole
from tests.harness import FAKE_PLUGINS, ROOT, VENV_BIN, Worker, corpus, eventually
from tests.model_dirs import build_lifecycle_dir, write_model
from tests.queue.test_queue import submit_cli
from tests.units.test_models_audit import EXPECTED_KEPT, EXPECTED_PRUNED

FAKE_ENV = {"OCR_ENGINE_PLUGINS": FAKE_PLUGINS, "OCR_CACHE_RESULTS": "0"}
# Live: `old_in_use` is also the configured model of a live worker (in_use_worker).
LIVE_KEPT = {**EXPECTED_KEPT, "old_in_use": ["current_model", "loaded"]}
IMAGE = "scan_tess_phototest.tif"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lifecycle")
    found = {"models": root / "models", "outside": root / "outside",
             "models2": root / "models2"}
    build_lifecycle_dir(found["models"], found["outside"])
    write_model(found["models2"] / "lc-model")
    return found


@pytest.fixture(scope="module")
def models(redis_url: str) -> ModelRegistry:
    return ModelRegistry(redis.Redis.from_url(redis_url))


@pytest.fixture(scope="module")
def in_use_worker(start_worker: Callable[..., Worker], dirs: dict[str, Path]) -> Worker:
    """Holds `old_in_use` loaded; heartbeat 0.5 s, so its registration lives 1.5 s."""
    return start_worker(**FAKE_ENV, OCR_ENGINE="fake-model", OCR_MODEL="old_in_use",
                        OCR_MODEL_DIR=str(dirs["models"]), OCR_QUEUES="in-use",
                        OCR_CONCURRENCY="1", OCR_MODEL_HEARTBEAT_SECONDS="0.5",
                        OCR_PRUNE_UNUSED_DAYS="30")


@pytest.fixture(scope="module")
def audit_worker(start_worker: Callable[..., Worker], dirs: dict[str, Path],
                 in_use_worker: Worker) -> Worker:
    """Serves queue `ocr`; configured model `current-model`; prunes after 30 unused days."""
    return start_worker(**FAKE_ENV, OCR_ENGINE="fake", OCR_MODEL="current-model",
                        OCR_MODEL_DIR=str(dirs["models"]), OCR_PRUNE_UNUSED_DAYS="30",
                        OCR_CONCURRENCY="2")


@pytest.fixture
def fresh_dir(dirs: dict[str, Path], models: ModelRegistry, audit_worker: Worker) -> Path:
    """The scenario, rebuilt; `stale-used` recorded as used an hour ago."""
    build_lifecycle_dir(dirs["models"], dirs["outside"])
    models.record_use(["stale-used"], time.time() - 3600)
    return dirs["models"]


def by_name(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {item["name"]: item for item in items}


def host_report(result: dict[str, Any], model_dir: Path) -> dict[str, Any]:
    """The report of `model_dir` from an every-host result (`submit.py models --json`)."""
    found = [r for r in result["hosts"] if r["model_dir"] == str(model_dir.resolve())]
    assert len(found) == 1, result
    return found[0]


def loaded_pids(models: ModelRegistry, model: str) -> set[int]:
    return {h.pid for h in models.loaded() if h.model == model}


# --- audit ----------------------------------------------------------------------

def test_audit_reports_every_entry(fresh_dir: Path, client: OcrClient, models: ModelRegistry,
                                   in_use_worker: Worker) -> None:
    sent = time.time()
    job = client.app.send_task("ocr.document", queue="in-use", kwargs={
        "data_b64": _b64(IMAGE)}).id
    assert client.wait([job], timeout=30)[job]["status"] == "SUCCESS"
    # the child records the models a task used after its result is stored (task_postrun)
    eventually(lambda: any(t >= sent for t in models.last_used().values()), 30,
               "the job's model use recorded")
    before = sorted(os.listdir(fresh_dir))

    report = OperatorConsole(client).audit_models(timeout=60)

    assert report["mode"] == "audit" and report["errors"] == []
    assert sorted(os.listdir(fresh_dir)) == before  # an audit removes nothing
    found = by_name(report["models"])
    assert set(found) == set(EXPECTED_PRUNED) | set(EXPECTED_KEPT)
    assert found["current-model"]["kind"] == "model"
    assert found["current-model"]["model_type"] == "qwen2_vl"
    assert found["current-model"]["size_bytes"] > 100
    assert found["notes.txt"]["kind"] == "file"
    assert found["old_linked"]["link"] == str(fresh_dir.parent / "outside" / "shared-model")
    assert found["old_linked"]["size_bytes"] == 0
    assert found["dangling"]["kind"] == "link"
    assert "does not parse" in found["broken-config"]["integrity"]["problems"][0]
    assert found["truncated"]["integrity"]["problems"][0].startswith(
        "model.safetensors: tensor 'w' ends at data byte 64 of 60 (truncated)")
    assert found["partial"]["integrity"]["partial"] == [
        "model-00002-of-00002.safetensors.incomplete"]
    assert found["current-model"]["integrity"]["ok"] is True
    # loaded by the live worker, used by its job; stale-used from the fixture
    assert [re.sub(r" \(pid \d+\)", "", h) for h in found["old_in_use"]["loaded_by"]] == \
        [_node(in_use_worker)]
    assert found["old_in_use"]["last_used"] is not None
    assert found["stale-used"]["last_used"] is not None
    assert found["stale"]["last_used"] is None
    kept = by_name(report["kept"])
    assert {n for n, k in kept.items() if k["reasons"] == ["audit_only"]} == set(EXPECTED_PRUNED)
    assert kept["old_in_use"]["reasons"] == ["current_model", "loaded"]
    assert found["old_in_use"]["status"] == "CURRENT"
    assert found["current-model"]["status"] == "CURRENT"
    assert found["old_model"]["status"] == "OLD" and found["notes.txt"]["status"] == "OK"
    assert models.latest_report() == report


def test_idle_child_keeps_its_registration_alive(in_use_worker: Worker,
                                                 models: ModelRegistry) -> None:
    client_redis = models._redis
    pid = eventually(lambda: loaded_pids(models, "old_in_use"), 10, "registration")
    time.sleep(2.0)  # longer than the 1.5 s TTL: only the heartbeat keeps it
    assert loaded_pids(models, "old_in_use") == pid
    key = next(k for k in client_redis.scan_iter(LOADED_PREFIX + "*")
               if b"old_in_use" in k)
    assert 0 < client_redis.pttl(key) <= 1500


def test_dry_run_shows_what_would_go(fresh_dir: Path, redis_url: str) -> None:
    before = sorted(os.listdir(fresh_dir))
    done = submit_cli(redis_url, "models", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    report = host_report(json.loads(done.stdout), fresh_dir)
    assert report["dry_run"] is True
    assert {p["name"]: p["reasons"] for p in report["pruned"]} == EXPECTED_PRUNED
    assert {k["name"]: k["reasons"] for k in report["kept"]} == LIVE_KEPT
    assert sorted(os.listdir(fresh_dir)) == before
    table = submit_cli(redis_url, "models", "--dry-run")
    assert table.returncode == 0
    assert "would be pruned:" in table.stdout and "NAME" in table.stdout
    assert re.search(r"^  old_model: name starts with 'old_'", table.stdout, re.M)
    assert re.search(r"^  old_in_use: current_model, loaded \(the configured OCR_MODEL"
                     r".*; loaded by ", table.stdout, re.M), table.stdout
    assert re.search(r"^== \S+: " + re.escape(str(fresh_dir.resolve())), table.stdout, re.M)


def test_prune_removes_exactly_the_policy(fresh_dir: Path, redis_url: str,
                                          models: ModelRegistry) -> None:
    outside = fresh_dir.parent / "outside"
    done = submit_cli(redis_url, "models", "--prune", "--json")
    assert done.returncode == 0, done.stderr
    report = host_report(json.loads(done.stdout), fresh_dir)
    assert report["mode"] == "prune" and report["errors"] == []
    assert {p["name"]: p["reasons"] for p in report["pruned"]} == EXPECTED_PRUNED
    kept = by_name(report["kept"])
    assert {n: k["reasons"] for n, k in kept.items()} == LIVE_KEPT
    assert kept["current-model"]["matched"] == ["unused"]  # kept only as the configured one
    assert kept["old_in_use"]["matched"] == ["prefix"]  # kept only as configured, loaded
    assert kept["downloading"]["matched"] == ["partial"]  # kept only as recent
    assert sorted(os.listdir(fresh_dir)) == sorted(EXPECTED_KEPT)
    # links were removed as links: their targets and what links inside pointed to remain
    assert (outside / "shared-model" / "model.safetensors").is_file()
    assert (outside / "precious.bin").read_bytes() == b"not in the model directory"
    assert os.path.islink(fresh_dir / "linked-model")
    assert models.latest_report() == report
    assert report in models.latest_reports()
    assert report["totals"]["pruned"] == len(EXPECTED_PRUNED)


def test_prune_lock_held_elsewhere_prunes_nothing(fresh_dir: Path, client: OcrClient,
                                                  models: ModelRegistry,
                                                  audit_worker: Worker) -> None:
    host = _node(audit_worker).split("@", 1)[1]
    with models.prune_lock(f"{host}:{fresh_dir.resolve()}") as acquired:
        assert acquired
        report = OperatorConsole(client).audit_models(prune=True, timeout=60)
    assert report["pruned"] == []
    assert [e["code"] for e in report["errors"]] == ["prune_locked"]
    assert len(os.listdir(fresh_dir)) == len(EXPECTED_PRUNED) + len(EXPECTED_KEPT)
    # the lock was released
    assert OperatorConsole(client).audit_models(prune=True, timeout=60)["errors"] == []


def test_two_audits_at_once_prune_once(fresh_dir: Path, client: OcrClient,
                                       models: ModelRegistry) -> None:
    """Two prune audits on two pool children at once: one prunes, one is locked out.

    Tried up to 3 times in case the two did not overlap in time (a busy machine); every
    try checks that each entry was pruned exactly once.
    """
    for attempt in range(3):
        if attempt:
            build_lifecycle_dir(fresh_dir, fresh_dir.parent / "outside")
            models.record_use(["stale-used"], time.time() - 3600)
        bulk = fresh_dir / "old_bulk"  # enough files that a prune takes a while
        bulk.mkdir()
        for i in range(3000):
            (bulk / f"f{i}").write_bytes(b"x")
        jobs = [client.app.send_task("ocr.audit_models", kwargs={"prune": True}).id
                for _ in range(2)]
        results = client.wait(jobs, timeout=120)
        reports = [results[j] for j in jobs]
        pruned = [p["name"] for r in reports for p in r["pruned"]]
        assert sorted(pruned) == sorted([*EXPECTED_PRUNED, "old_bulk"])  # each once
        assert sorted(os.listdir(fresh_dir)) == sorted(EXPECTED_KEPT)
        codes = [e["code"] for r in reports for e in r["errors"]]
        assert set(codes) <= {"prune_locked"}
        start = [r["started_at"] for r in reports]
        end = [r["finished_at"] for r in reports]
        if start[0] < end[1] and start[1] < end[0]:  # ran at the same time
            assert codes == ["prune_locked"]
            return
    pytest.fail("the two audits never ran at the same time")


def test_scheduled_copies_from_two_beats_run_once(fresh_dir: Path, client: OcrClient,
                                                  models: ModelRegistry) -> None:
    models._redis.delete(SCHEDULED_KEY)
    try:
        jobs = [client.app.send_task("ocr.audit_models",
                                     kwargs={"prune": False, "scheduled": True}).id
                for _ in range(2)]
        results = client.wait(jobs, timeout=60)
    finally:
        models._redis.delete(SCHEDULED_KEY)
    skipped = [results[j].get("skipped", False) for j in jobs]
    assert sorted(skipped) == [False, True]
    ran = next(results[j] for j in jobs if not results[j].get("skipped"))
    targets = {t["model_dir"]: t for t in ran["dispatched"]}  # one worker per directory
    assert str(fresh_dir.resolve()) in targets and len(targets) == len(ran["dispatched"])
    copies = client.wait([t["task_id"] for t in ran["dispatched"]], timeout=60)
    report = copies[targets[str(fresh_dir.resolve())]["task_id"]]
    assert report["mode"] == "audit" and len(report["models"]) > 0
    assert report["run"] == ran["run"] and report["worker"] == \
        targets[str(fresh_dir.resolve())]["node"]


def test_bad_audit_kwargs_fail_with_a_code(audit_worker: Worker, client: OcrClient) -> None:
    job = client.app.send_task("ocr.audit_models", kwargs={"prune": "false"}).id
    result = client.wait([job], timeout=30)[job]
    assert result["status"] == "FAILURE" and result["error"]["code"] == "bad_request"


# --- release ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def release_worker(start_worker: Callable[..., Worker], dirs: dict[str, Path]) -> Worker:
    """Two children holding `lc-model`; default heartbeat (registrations live 90 s)."""
    return start_worker(**FAKE_ENV, OCR_ENGINE="fake-model", OCR_MODEL="lc-model",
                        OCR_MODEL_DIR=str(dirs["models2"]), OCR_QUEUES="release",
                        OCR_CONCURRENCY="2")


def _node(worker: Worker) -> str:
    found = re.search(r"(\S+@\S+) ready\.", worker.log())
    assert found
    return found.group(1)


def _count(worker: Worker, pattern: str) -> int:
    return len(re.findall(pattern, worker.log()))


def _run_on(client: OcrClient, queue: str) -> dict[str, Any]:
    job = client.app.send_task("ocr.document", queue=queue, kwargs={"data_b64": _b64(IMAGE)}).id
    result = client.wait([job], timeout=30)[job]
    assert result["status"] == "SUCCESS", result
    return result


def test_unload_control_frees_engines_and_next_job_reloads(release_worker: Worker,
                                                           client: OcrClient,
                                                           models: ModelRegistry,
                                                           redis_url: str) -> None:
    pids = eventually(lambda: len(p := loaded_pids(models, "lc-model")) == 2 and p, 10,
                      "two registrations")
    tasks: dict[int, int] = dict.fromkeys(pids, 0)
    first = _run_on(client, "release")["engine"]
    tasks[first["pid"]] += 1
    assert first["tasks_in_process"] == 1

    env = {**os.environ, "REDIS_URL": redis_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(VENV_BIN / "celery"), "-A", "tasks", "control", "unload_model",
                           "-d", _node(release_worker), "--timeout", "5"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "release requested in 2 pool children" in done.stdout

    for pid in pids:
        eventually(lambda pid=pid: f"engine unloaded: fake-model (pid {pid})"
                   in release_worker.log(), 10, f"unload in {pid}")
    assert _count(release_worker, r"engines released \(unload_model\)") == 2
    eventually(lambda: not loaded_pids(models, "lc-model"), 10, "registrations removed")

    reloaded = set()
    for _ in range(3):  # the next jobs load again, in whichever child takes them
        engine = _run_on(client, "release")["engine"]
        tasks[engine["pid"]] += 1
        reloaded.add(engine["pid"])
        assert engine["tasks_in_process"] == tasks[engine["pid"]]  # counts on
        assert _count(release_worker, rf"engine loaded: fake-model model=lc-model "
                                      rf"in \S+ \(pid {engine['pid']}\)") == 2
    assert loaded_pids(models, "lc-model") == reloaded  # registered again on load


def test_submit_models_unload(release_worker: Worker, redis_url: str,
                              models: ModelRegistry, client: OcrClient) -> None:
    """Broadcast to every worker of this module; runs after the audit tests."""
    _run_on(client, "release")
    released = _count(release_worker, r"engines released \(unload_model\)")
    done = submit_cli(redis_url, "models", "--unload", "--json")
    assert done.returncode == 0, done.stderr
    replies = json.loads(done.stdout)["unload"]
    assert replies[_node(release_worker)]["ok"] == "release requested in 2 pool children"
    eventually(lambda: _count(release_worker, r"engines released \(unload_model\)")
               > released, 10, "release")
    eventually(lambda: not loaded_pids(models, "lc-model"), 10, "registrations removed")
    assert submit_cli(redis_url, "models", "--unload", "--prune").returncode == 2


@pytest.fixture(scope="module")
def idle_worker(start_worker: Callable[..., Worker], dirs: dict[str, Path]) -> Worker:
    return start_worker(**FAKE_ENV, OCR_ENGINE="fake-model", OCR_MODEL="lc-model",
                        OCR_MODEL_DIR=str(dirs["models2"]), OCR_QUEUES="idle",
                        OCR_CONCURRENCY="1", OCR_IDLE_UNLOAD_SECONDS="1.5",
                        OCR_MODEL_HEARTBEAT_SECONDS="0.5")


def test_idle_release_and_lazy_reload(idle_worker: Worker, client: OcrClient,
                                      models: ModelRegistry) -> None:
    # loaded at start, idle since: released after 1.5 s
    pid = eventually(lambda: re.search(r"engines released \(idle\) in pid (\d+)",
                                       idle_worker.log()), 10, "first idle release").group(1)
    first = _run_on(client, "idle")["engine"]
    assert str(first["pid"]) == pid and first["tasks_in_process"] == 1
    assert _count(idle_worker, rf"engine loaded: fake-model \S+ in \S+ \(pid {pid}\)") == 2
    finished = time.monotonic()
    assert int(pid) in loaded_pids(models, "lc-model")  # loaded again, registered
    eventually(lambda: _count(idle_worker, r"engines released \(idle\)") == 2, 10,
               "second idle release")
    assert time.monotonic() - finished >= 1.0  # not before the idle time
    eventually(lambda: int(pid) not in loaded_pids(models, "lc-model"), 10, "deregistered")
    second = _run_on(client, "idle")["engine"]
    assert second["pid"] == int(pid) and second["tasks_in_process"] == 2
    assert _count(idle_worker, rf"engine loaded: fake-model \S+ in \S+ \(pid {pid}\)") == 3


def test_shutdown_removes_registrations(start_worker: Callable[..., Worker],
                                        dirs: dict[str, Path], models: ModelRegistry) -> None:
    worker = start_worker(**FAKE_ENV, OCR_ENGINE="fake-model", OCR_MODEL="lc-model",
                          OCR_MODEL_DIR=str(dirs["models2"]), OCR_QUEUES="shutdown",
                          OCR_CONCURRENCY="1")  # heartbeat 30 s: registrations live 90 s
    # The worker parent's "ready" may come before its child's line (a loaded machine).
    pid = int(eventually(lambda: re.findall(r"engine loaded: fake-model \S+ in \S+ "
                                            r"\(pid (\d+)\)", worker.log()), 30,
                         "the child's engine")[-1])
    eventually(lambda: pid in loaded_pids(models, "lc-model"), 10, "registration")
    worker.stop()
    assert pid not in loaded_pids(models, "lc-model")  # removed at exit, not expired


def _b64(name: str) -> str:
    import base64

    return base64.b64encode(corpus(name).read_bytes()).decode()
