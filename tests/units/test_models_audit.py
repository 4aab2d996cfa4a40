"""Unit tests of the model-directory audit: integrity checks, scan, policy, removal.

Pure code on tmp_path; the Redis side is replaced by an in-memory `AuditState`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab

from tasks.engines import resolve_engine
from tasks.errors import PathNotAllowed
from tasks.models.audit import AuditRun, mode_for, run_audit
from tasks.models.decisions import PrunePolicy, decide, matched_rules
from tasks.models.integrity import Integrity, check_index, check_safetensors
from tasks.models.inventory import Holder, ModelEntry, scan, scan_entry
from tasks.models.locate import configured_model, locate, searched
from tasks.models.prune import remove_entry, remove_partial_blob
from tasks.queue.celery_config import celery_config
from tasks.queue.maintenance_tasks import scheduled_run_window
from tasks.settings import Settings, SettingsError
from tests.model_dirs import (
    DAY,
    age,
    build_lifecycle_dir,
    model_files,
    write_hub_repo,
    write_model,
    write_safetensors,
)

# --- safetensors and index checks ---------------------------------------------------


def test_valid_safetensors_pass(tmp_path: Path) -> None:
    assert check_safetensors(write_safetensors(tmp_path / "a.safetensors")) is None


def test_files_of_the_safetensors_library_pass(tmp_path: Path) -> None:
    numpy = pytest.importorskip("numpy")
    st = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "lib.safetensors"
    st.save_file({"x": numpy.ones((3, 5), dtype=numpy.float16),
                  "y": numpy.zeros((7,), dtype=numpy.int64)}, str(path))
    assert check_safetensors(path) is None
    path.write_bytes(path.read_bytes()[:-1])
    assert "truncated" in (check_safetensors(path) or "")


def _raw(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "raw.safetensors"
    path.write_bytes(data)
    return path


def _header(header: dict[str, Any], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


@pytest.mark.parametrize("data,problem", [
    (b"", "shorter than the 8-byte header length"),
    (struct.pack("<Q", 10**9) + b"{}", "does not fit the file"),
    (struct.pack("<Q", 0), "does not fit the file"),
    (struct.pack("<Q", 4) + b"{no}", "header is not valid JSON"),
    (_header([1, 2]), "not a JSON object"),  # type: ignore[arg-type]
    (_header({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4),
     "ends at data byte 8 of 4 (truncated)"),
    (_header({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8),
     "needs 12 bytes but has 8"),
    (_header({"t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8),
     "invalid data_offsets"),
    (_header({"t": "nothing"}), "has no description"),
])
def test_damaged_safetensors_are_named(tmp_path: Path, data: bytes, problem: str) -> None:
    found = check_safetensors(_raw(tmp_path, data))
    assert found is not None and problem in found, found


def test_packed_dtypes_are_only_checked_against_the_file(tmp_path: Path) -> None:
    data = _header({"q": {"dtype": "F4", "shape": [8], "data_offsets": [0, 4]}}, b"\0" * 4)
    assert check_safetensors(_raw(tmp_path, data)) is None


def test_index_lists_missing_shards(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model-00001-of-00002.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors",
                                                "b": "model-00002-of-00002.safetensors"}}))
    assert "model-00002-of-00002.safetensors" in (check_index(index) or "")
    write_safetensors(tmp_path / "model-00002-of-00002.safetensors")
    assert check_index(index) is None
    index.write_text(json.dumps({"weight_map": {"a": "../../etc/passwd"}}))
    assert "missing" in (check_index(index) or "")


# --- scan ---------------------------------------------------------------------------

def test_scan_entry_kinds_sizes_and_links(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    write_model(models / "vlm", model_type="qwen2_vl")
    (models / "plain").mkdir()
    (models / "readme.txt").write_text("hello")
    write_model(outside / "elsewhere")
    os.symlink(outside / "elsewhere", models / "link")
    os.symlink(tmp_path / "nothing", models / "dangling")
    os.symlink(models, models / "loop")
    os.link(models / "vlm" / "model.safetensors", models / "vlm" / "hardlink.safetensors")

    vlm = scan_entry(models, "vlm")
    assert (vlm.kind, vlm.model_type, vlm.link, vlm.integrity.ok) == \
        ("model", "qwen2_vl", None, True)
    files = [models / "vlm" / "config.json", models / "vlm" / "model.safetensors"]
    assert vlm.size_bytes == sum(f.stat().st_size for f in files)  # hard link once
    assert scan_entry(models, "plain").kind == "folder"
    assert scan_entry(models, "readme.txt").kind == "file"
    assert scan_entry(models, "readme.txt").size_bytes == 5
    link = scan_entry(models, "link")
    assert (link.kind, link.model_type, link.size_bytes, link.link) == \
        ("model", "qwen2_vl", 0, str(outside / "elsewhere"))
    assert link.resolved == (outside / "elsewhere").resolve()
    dangling = scan_entry(models, "dangling")
    assert dangling.kind == "link" and "dangling" in dangling.integrity.problems[0]
    loop = scan_entry(models, "loop")
    assert loop.kind == "link" and "model directory" in loop.integrity.problems[0]


def test_scan_finds_partial_and_broken_files_inside_folders(tmp_path: Path) -> None:
    write_model(tmp_path / "m")
    cache = tmp_path / "m" / ".cache" / "huggingface" / "download"
    cache.mkdir(parents=True)
    (cache / "abc.incomplete").write_bytes(b"x")
    write_safetensors(tmp_path / "m" / "sub.safetensors", truncate_to=50)
    entry = scan_entry(tmp_path, "m")
    assert entry.integrity.partial == (".cache/huggingface/download/abc.incomplete",)
    assert len(entry.integrity.problems) == 1
    assert entry.integrity.problems[0].startswith("sub.safetensors: header length")


def test_scan_attaches_use_and_holders_by_name_or_path(tmp_path: Path) -> None:
    write_model(tmp_path / "a")
    write_model(tmp_path / "b")
    (tmp_path / "c").mkdir()
    holders = [Holder("a", "/elsewhere/a", "w1@h", "h", 1),
               Holder("renamed", str((tmp_path / "b").resolve()), "w2@h", "h", 2)]
    entries = {e.name: e for e in scan(tmp_path, {"a": 123.0}, holders)}
    assert [h.pid for h in entries["a"].loaded_by] == [1]
    assert [h.pid for h in entries["b"].loaded_by] == [2]
    assert entries["c"].loaded_by == () and entries["a"].last_used == 123.0


# --- policy -------------------------------------------------------------------------

NOW = 1_000_000_000.0


def _entry(name: str, **kw: Any) -> ModelEntry:
    base = ModelEntry(name, "model", Path("/m") / name, 10, NOW - 10 * DAY,
                      Integrity())
    return ModelEntry(**{**base.__dict__, **kw})


def test_rules_prefix_unused_broken_partial() -> None:
    policy = PrunePolicy(prefix="old_", unused_days=30)
    assert matched_rules(_entry("old_x"), policy, NOW) == ["prefix"]
    assert matched_rules(_entry("x", modified=NOW - 31 * DAY), policy, NOW) == ["unused"]
    assert matched_rules(_entry("x", modified=NOW - 31 * DAY, last_used=NOW - DAY),
                         policy, NOW) == []
    assert matched_rules(_entry("x", integrity=Integrity(("bad",), ("a.part",))),
                         policy, NOW) == ["broken", "partial"]
    assert matched_rules(_entry("old_x"), PrunePolicy(prefix=""), NOW) == []
    assert matched_rules(_entry("x", modified=0.0), PrunePolicy(), NOW) == []  # unused off


def test_protections_and_grace(tmp_path: Path) -> None:
    policy = PrunePolicy(current_model="old_current", grace_seconds=3600)

    def d(entry: ModelEntry, pruning: bool = True) -> tuple[bool, tuple[str, ...]]:
        decision = decide(entry, policy, tmp_path, NOW, pruning)
        return decision.prune, decision.reasons

    assert d(_entry("old_x")) == (True, ("prefix",))
    assert d(_entry("old_current")) == (False, ("current_model",))
    holder = Holder("old_x", "", "w@h", "h", 7)
    assert d(_entry("old_x", loaded_by=(holder,))) == (False, ("loaded",))
    broken = Integrity(("config.json does not parse",))
    assert d(_entry("b", integrity=broken)) == (True, ("broken",))
    assert d(_entry("b", integrity=broken, modified=NOW - 60)) == (False, ("recent",))
    assert d(_entry("old_b", integrity=broken, modified=NOW - 60)) == (True, ("prefix",))
    assert d(_entry("old_x"), pruning=False) == (False, ("audit_only",))
    assert d(_entry("fine")) == (False, ("no_rule",))
    locked = decide(_entry("old_x"), policy, tmp_path, NOW, False, "prune_locked")
    assert locked.reasons == ("prune_locked",) and locked.matched == ("prefix",)


def test_a_broken_model_never_shows_ok(tmp_path: Path) -> None:
    """A model whose config.json does not parse: BROKEN, also when too recent to prune.

    Configured as OCR_MODEL it is BROKEN too (no worker can load it); a prune candidate
    stays OLD, its reason naming the breakage.
    """
    write_model(tmp_path / "fresh-broken", config="{not json")
    write_model(tmp_path / "current-broken", config="{not json")
    write_model(tmp_path / "fine")
    policy = PrunePolicy(current_model="current-broken", grace_seconds=3600)
    report = run_audit(AuditRun(tmp_path, policy, "audit"), MemoryState())
    found = {m["name"]: m for m in report["models"]}
    assert found["fresh-broken"]["integrity"]["problems"] == ["config.json does not parse"]
    assert {name: m["status"] for name, m in found.items()} == {
        "fresh-broken": "BROKEN", "current-broken": "BROKEN", "fine": "OK"}
    age(tmp_path / "fresh-broken", 2 * DAY)
    aged = run_audit(AuditRun(tmp_path, PrunePolicy(), "dry-run"), MemoryState())
    old = {m["name"]: m for m in aged["models"]}["fresh-broken"]
    assert old["status"] == "OLD" and old["old_reason"].startswith("broken: ")


def test_current_model_through_a_link_protects_its_target(tmp_path: Path) -> None:
    write_model(tmp_path / "old_real")
    os.symlink("old_real", tmp_path / "current")
    policy = PrunePolicy(current_model="current")
    real = scan_entry(tmp_path, "old_real")
    decision = decide(real, policy, tmp_path, time.time(), True)
    assert decision.reasons == ("current_model",) and not decision.prune
    assert "leads to the configured OCR_MODEL" in decision.detail


# --- removal ------------------------------------------------------------------------

def test_remove_unlinks_links_and_never_follows_them(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "outside"
    models.mkdir()
    write_model(outside / "target")
    (outside / "file.bin").write_bytes(b"keep me")
    os.symlink(outside / "target", models / "link")
    write_model(models / "folder")
    os.symlink(outside / "file.bin", models / "folder" / "inner-link")
    os.symlink(outside, models / "folder" / "dir-link")
    remove_entry(models, "link")
    remove_entry(models, "folder")
    assert os.listdir(models) == []
    assert (outside / "target" / "config.json").is_file()
    assert (outside / "file.bin").read_bytes() == b"keep me"


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../outside"])
def test_remove_refuses_anything_but_a_direct_entry(tmp_path: Path, name: str) -> None:
    from tasks.errors import PathNotAllowed

    with pytest.raises(PathNotAllowed):
        remove_entry(tmp_path, name)


# --- the whole audit with an in-memory state ----------------------------------------

class MemoryState:
    """The Redis side, in memory."""

    def __init__(self, loaded: list[Holder] | None = None, locked: bool = False) -> None:
        self.holders = loaded or []
        self.wanted: list[Holder] = []
        self.lock_scopes: list[str] = []
        self.locked = locked
        self.used: dict[str, float] = {}
        self.reports: list[dict[str, Any]] = []

    def last_used(self) -> dict[str, float]:
        return dict(self.used)

    def loaded(self) -> list[Holder]:
        return list(self.holders)

    def configured(self) -> list[Holder]:
        return list(self.wanted)

    @contextmanager
    def prune_lock(self, scope: str) -> Iterator[bool]:
        self.lock_scopes.append(scope)
        yield not self.locked

    def save_report(self, report: dict[str, Any]) -> None:
        self.reports.append(report)


EXPECTED_PRUNED = {"old_model": ["prefix"], "stale": ["unused"],
                   "broken-config": ["broken"], "truncated": ["broken"],
                   "partial": ["partial"], "old_linked": ["prefix"], "dangling": ["broken"]}
EXPECTED_KEPT = {"current-model": ["current_model"], "old_in_use": ["loaded"],
                 "stale-used": ["no_rule"], "downloading": ["recent"],
                 "linked-model": ["no_rule"], "notes.txt": ["no_rule"]}
POLICY = PrunePolicy(current_model="current-model", prefix="old_", unused_days=30,
                     grace_seconds=3600)


def _state(models: Path) -> MemoryState:
    state = MemoryState([Holder("old_in_use", str(models / "old_in_use"), "w@h", "h", 9)])
    state.used["stale-used"] = time.time() - DAY
    return state


def test_run_audit_prunes_exactly_the_policy(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "outside"
    build_lifecycle_dir(models, outside)
    state = _state(models)
    report = run_audit(AuditRun(models, POLICY, "prune", host="h"), state)
    assert {p["name"]: p["reasons"] for p in report["pruned"]} == EXPECTED_PRUNED
    assert {k["name"]: k["reasons"] for k in report["kept"]} == EXPECTED_KEPT
    assert sorted(os.listdir(models)) == sorted(EXPECTED_KEPT)
    assert (outside / "shared-model" / "model.safetensors").is_file()
    assert (outside / "precious.bin").is_file()
    assert report["errors"] == [] and state.reports == [report]
    assert report["totals"]["pruned"] == len(EXPECTED_PRUNED)
    assert report["totals"]["entries"] == len(EXPECTED_PRUNED) + len(EXPECTED_KEPT)
    json.dumps(report)


def test_dry_run_and_audit_remove_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_lifecycle_dir(models, tmp_path / "outside")
    before = sorted(os.listdir(models))
    dry = run_audit(AuditRun(models, POLICY, mode_for(True, True)), _state(models))
    assert dry["mode"] == "dry-run" and dry["dry_run"] is True
    assert {p["name"] for p in dry["pruned"]} == set(EXPECTED_PRUNED)
    audit = run_audit(AuditRun(models, POLICY, mode_for(False, False)), _state(models))
    assert audit["pruned"] == []
    assert {k["name"] for k in audit["kept"] if k["reasons"] == ["audit_only"]} == \
        set(EXPECTED_PRUNED)
    assert sorted(os.listdir(models)) == before


def test_prune_without_the_lock_removes_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    build_lifecycle_dir(models, tmp_path / "outside")
    state = _state(models)
    state.locked = True
    report = run_audit(AuditRun(models, POLICY, "prune"), state)
    assert report["pruned"] == []
    assert [e["code"] for e in report["errors"]] == ["prune_locked"]
    assert {k["name"] for k in report["kept"] if k["reasons"] == ["prune_locked"]} == \
        set(EXPECTED_PRUNED)
    assert len(os.listdir(models)) == len(EXPECTED_PRUNED) + len(EXPECTED_KEPT)


def test_missing_model_dir_is_reported(tmp_path: Path) -> None:
    report = run_audit(AuditRun(tmp_path / "nope", POLICY, "prune"), MemoryState())
    assert report["models"] == [] and report["errors"][0]["code"] == "model_dir_missing"


def test_failed_removal_is_an_error_not_a_crash(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    models = tmp_path / "models"
    write_model(models / "old_a")
    write_model(models / "old_b")
    real_rmtree = shutil.rmtree

    def rmtree(path: Path) -> None:
        if Path(path).name == "old_a":
            raise PermissionError(13, "Permission denied")
        real_rmtree(path)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    report = run_audit(AuditRun(models, PrunePolicy(), "prune"), MemoryState())
    assert [p["name"] for p in report["pruned"]] == ["old_b"]
    assert [(e["code"], e["name"]) for e in report["errors"]] == [("prune_failed", "old_a")]
    assert "Permission denied" in report["errors"][0]["message"]
    assert report["kept"][0]["reasons"] == ["remove_failed"]
    assert sorted(os.listdir(models)) == ["old_a"]


# --- settings and schedule ------------------------------------------------------------

def test_schedule_settings_and_beat_entry() -> None:
    settings = Settings.from_env({"OCR_TIMEZONE": "Europe/Berlin"})
    conf = celery_config(settings)
    entry = conf["beat_schedule"]["ocr-audit-models"]
    assert entry["task"] == "ocr.audit_models"
    assert entry["kwargs"] == {"prune": True, "scheduled": True}
    assert entry["options"] == {"queue": "ocr"}
    assert isinstance(entry["schedule"], crontab)
    assert entry["schedule"].hour == {3} and entry["schedule"].minute == {0}
    assert conf["timezone"] == "Europe/Berlin"
    off = Settings.from_env({"OCR_AUDIT_CRONTAB": "off", "OCR_PRUNE_ON_SCHEDULE": "0"})
    assert celery_config(off)["beat_schedule"] == {}
    assert Settings.from_env({}).schedule_timezone  # this machine's zone, or UTC


@pytest.mark.parametrize("env", [
    {"OCR_AUDIT_CRONTAB": "0 25 * * *"}, {"OCR_AUDIT_CRONTAB": "0 3 * *"},
    {"OCR_TIMEZONE": "Mars/Olympus"}, {"OCR_PRUNE_UNUSED_DAYS": "-1"},
    {"OCR_IDLE_UNLOAD_SECONDS": "-5"}, {"OCR_MODEL_HEARTBEAT_SECONDS": "0"},
    {"OCR_PRUNE_PREFIX": "a/b"},
])
def test_bad_lifecycle_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=next(iter(env))):
        Settings.from_env(env)


@pytest.mark.parametrize("expr,window", [
    ("0 3 * * *", 43200), ("*/15 * * * *", 450), ("0 */6 * * *", 10800),
    ("0,50 * * * *", 300), ("30 2 * * 1", 43200), ("off", 0),
])
def test_scheduled_run_window_is_half_the_shortest_gap(expr: str, window: float) -> None:
    assert scheduled_run_window(Settings.from_env({"OCR_AUDIT_CRONTAB": expr})) == window


def test_holder_round_trip() -> None:
    holder = Holder("m", "/p/m", "w@h", "h", 3, "mlx-vlm", 12.5)
    assert Holder.from_dict(json.loads(json.dumps(holder.to_dict()))) == holder
    assert holder.label == "w@h (pid 3)"


# --- Hugging Face hub cache layout ------------------------------------------------------

MAIN, OLD_REV, PINNED = "a" * 40, "b" * 40, "c" * 40
REPO = "mlx-community/Tiny-VL"


def _hub_dir(tmp_path: Path) -> Path:
    """A cache as huggingface_hub leaves it, with a flat model folder beside it.

    `REPO`: `refs/main` -> MAIN; OLD_REV and PINNED detached (OLD_REV shares
    config.json's blob with MAIN); one stale and one fresh `.incomplete` blob.
    """
    models = tmp_path / "models"
    shared = model_files()
    write_hub_repo(models, REPO, {
        MAIN: shared,
        OLD_REV: {"config.json": shared["config.json"],
                  "model.safetensors": model_files(tensors={"w": [8, 8]})["model.safetensors"]},
        PINNED: {**shared, "extra.txt": b"pinned"}},
        refs={"main": MAIN}, incomplete={"stale": b"x" * 100})
    age(models / f"models--{REPO.replace('/', '--')}", 3 * DAY)
    blobs = models / f"models--{REPO.replace('/', '--')}" / "blobs"
    (blobs / "fresh.incomplete").write_bytes(b"y" * 10)  # a download running now
    write_model(models / "flat-model")
    return models


def test_hub_repos_are_listed_by_repo_id(tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    entries = {e.name: e for e in scan(models, {REPO + "@" + MAIN: 5.0}, [])}
    assert list(entries) == [REPO, "flat-model"]  # hub repos first; no `.locks`, no folder name
    hub = entries[REPO]
    assert (hub.kind, hub.model_type, hub.integrity.problems) == ("hub", "qwen2_vl", ())
    blobs = models / f"models--{REPO.replace('/', '--')}" / "blobs"
    complete = [p for p in blobs.iterdir() if not p.name.endswith(".incomplete")]
    assert hub.size_bytes == sum(p.stat().st_size for p in complete)  # each blob once
    assert hub.last_used == 5.0
    out = hub.to_dict()["hub"]
    assert out["refs"] == {"main": MAIN}
    assert [(r["commit"], r["refs"]) for r in out["revisions"]] == \
        [(MAIN, ["main"]), (OLD_REV, []), (PINNED, [])]
    assert sorted(i["file"].rsplit("/", 1)[1] for i in out["incomplete"]) == \
        ["fresh.incomplete", "stale.incomplete"]
    assert entries["flat-model"].kind == "model"
    json.dumps(hub.to_dict())


def test_stale_incomplete_blob_goes_and_the_repo_stays(tmp_path: Path) -> None:
    """The data-loss case: another worker audits, nobody has the repo loaded."""
    models = _hub_dir(tmp_path)
    folder = models / f"models--{REPO.replace('/', '--')}"
    (folder / "blobs" / "fresh.incomplete").unlink()
    write_hub_repo(models, REPO, {}, refs={}, incomplete={"stale": b"x" * 100})
    age(folder / "blobs" / "stale.incomplete", 2 * DAY)
    state = MemoryState()
    state.wanted = [Holder(REPO + "@" + PINNED, "", "vlm@h", "h", 1)]  # pins PINNED
    report = run_audit(AuditRun(models, PrunePolicy(current_model="flat-model"), "prune",
                                host="h"), state)
    assert not (folder / "blobs" / "stale.incomplete").exists()
    assert (folder / "snapshots" / MAIN / "config.json").is_file()  # loadable as before
    assert check_safetensors(folder / "snapshots" / MAIN / "model.safetensors") is None
    pruned = {(p["name"], p["scope"]): p for p in report["pruned"]}
    assert pruned[(REPO, "incomplete")]["parts"] == [f"{folder.name}/blobs/stale.incomplete"]
    assert pruned[(REPO, "revisions")]["parts"] == [OLD_REV]  # PINNED is configured
    assert (REPO, "entry") not in pruned
    assert sorted(os.listdir(folder / "snapshots")) == [MAIN, PINNED]
    assert (folder / "refs" / "main").read_text() == MAIN
    assert report["errors"] == [] and state.lock_scopes == [f"h:{models.resolve()}"]
    status = {m["name"]: m["status"] for m in report["models"]}
    assert status == {REPO: "CURRENT", "flat-model": "CURRENT"}


def test_fresh_incomplete_and_recent_revisions_are_kept(tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    folder = models / f"models--{REPO.replace('/', '--')}"
    write_hub_repo(models, REPO, {OLD_REV: {"new.txt": b"just downloaded"}}, refs={})
    report = run_audit(AuditRun(models, PrunePolicy(), "dry-run"), MemoryState())
    parts = {p["scope"]: p["parts"] for p in report["pruned"] if p["name"] == REPO}
    assert parts["incomplete"] == [f"{folder.name}/blobs/stale.incomplete"]  # not fresh
    assert parts["revisions"] == [PINNED]  # OLD_REV was just written to
    assert (folder / "blobs" / "stale.incomplete").exists()  # dry run


def test_detached_revisions_go_with_delete_revisions(tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    folder = models / f"models--{REPO.replace('/', '--')}"
    loaded = Holder(REPO, str(folder / "snapshots" / PINNED), "w@h", "h", 3)
    report = run_audit(AuditRun(models, PrunePolicy(), "prune"), MemoryState([loaded]))
    assert sorted(os.listdir(folder / "snapshots")) == [MAIN, PINNED]  # PINNED loaded
    assert (folder / "snapshots" / MAIN / "config.json").read_text()  # shared blob kept
    revisions = next(p for p in report["pruned"] if p["scope"] == "revisions")
    assert revisions["parts"] == [OLD_REV] and revisions["size_bytes"] > 0
    assert report["errors"] == []


def test_a_repo_goes_whole_only_when_retired_or_unused(tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    folder = f"models--{REPO.replace('/', '--')}"
    truncated = model_files(truncate_to=40)
    write_hub_repo(models, "org/broken", {MAIN: truncated})
    age(models / "models--org--broken", 3 * DAY)
    policy = PrunePolicy(retired=(REPO,), grace_seconds=60)
    configured = MemoryState()
    configured.wanted = [Holder(REPO, "", "vlm@other", "other", 1)]
    kept = run_audit(AuditRun(models, policy, "prune"), configured)
    assert (models / folder).is_dir()  # retired, but a live worker is configured to it
    whole = next(k for k in kept["kept"] if k["name"] == REPO and k["scope"] == "entry")
    assert whole["reasons"] == ["current_model"] and whole["matched"] == ["retired"]
    broken = next(m for m in kept["models"] if m["name"] == "org/broken")
    assert broken["integrity"]["problems"] and broken["status"] == "BROKEN"
    assert (models / "models--org--broken").is_dir()  # broken hub repos are reported

    report = run_audit(AuditRun(models, policy, "prune"), MemoryState())
    assert [(p["name"], p["reasons"]) for p in report["pruned"]] == [(REPO, ["retired"])]
    assert not (models / folder).exists() and not (models / ".locks" / folder).exists()
    unused = PrunePolicy(unused_days=2)
    state = MemoryState()
    state.used["org/broken@main"] = time.time() - 3 * DAY
    report = run_audit(AuditRun(models, unused, "prune"), state)
    assert [(p["name"], p["reasons"]) for p in report["pruned"]] == \
        [("org/broken", ["unused"])]
    assert sorted(os.listdir(models)) == [".locks", "flat-model"]


def test_missing_model_dir_without_a_model_is_not_an_error(tmp_path: Path) -> None:
    report = run_audit(AuditRun(tmp_path / "nope", PrunePolicy(), "audit"), MemoryState())
    assert report["errors"] == [] and report["model_dir_exists"] is False
    assert "nothing to audit" in report["notes"][0]


def test_locate_folder_names_and_repo_ids(tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    snapshots = models / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert locate(models, REPO) == snapshots / MAIN
    assert locate(models, f"{REPO}@main") == snapshots / MAIN
    assert locate(models, f"{REPO}@{PINNED}") == snapshots / PINNED
    assert locate(models, f"{REPO}@v9") is None
    assert locate(models, "org/missing") is None
    assert locate(models, "flat-model") == (models / "flat-model").resolve()
    assert "models--org--missing (refs/main)" in searched(models, "org/missing")
    env = {"OCR_MODEL_DIR": str(models)}
    assert configured_model(Settings.from_env({**env, "OCR_MODEL": REPO})) == snapshots / MAIN
    assert resolve_engine(Settings.from_env({**env, "OCR_MODEL": REPO})) == "mlx-vlm"
    assert resolve_engine(Settings.from_env({**env, "OCR_MODEL": "org/none"})) == \
        "tesseract"


@pytest.mark.parametrize("value", ["a/b/c", "../x", "org/..", "..", "org/name@../x",
                                   "/abs", "org/"])
def test_bad_model_names_are_refused(value: str) -> None:
    with pytest.raises(SettingsError, match="OCR_MODEL"):
        Settings.from_env({"OCR_MODEL": value})
    with pytest.raises(SettingsError, match="OCR_RETIRED_MODELS"):
        Settings.from_env({"OCR_RETIRED_MODELS": f"ok, {value}"})


def test_a_missing_repo_is_engine_unavailable_with_the_path(tmp_path: Path) -> None:
    from tasks.engines.vlm.mlx_vlm_engine import MlxVlmEngine
    from tasks.errors import EngineUnavailable

    settings = Settings.from_env({"OCR_MODEL_DIR": str(tmp_path),
                                  "OCR_MODEL": "mlx-community/absent@v2"})
    with pytest.raises(EngineUnavailable) as raised:
        MlxVlmEngine.load(settings)
    assert f"searched {tmp_path}/models--mlx-community--absent (v2)" in raised.value.message
    assert "never downloaded" in raised.value.message
    assert os.listdir(tmp_path) == []


def test_hand_made_links_into_a_repo_keep_their_revision_and_count_as_use(
        tmp_path: Path) -> None:
    models = _hub_dir(tmp_path)
    folder = models / f"models--{REPO.replace('/', '--')}"
    os.symlink(folder / "snapshots" / PINNED, models / "tiny")  # the old way: a link
    state = MemoryState()
    state.used["tiny"] = time.time() - 3600
    report = run_audit(AuditRun(models, PrunePolicy(unused_days=2), "prune"), state)
    assert sorted(os.listdir(folder / "snapshots")) == [MAIN, PINNED]
    assert (models / "tiny" / "config.json").is_file()  # the link does not dangle
    assert [p["parts"] for p in report["pruned"] if p["scope"] == "revisions"] == [[OLD_REV]]
    assert all(p["name"] != REPO or p["scope"] != "entry" for p in report["pruned"])


def test_a_repo_the_hub_scan_refuses_is_reported_and_kept(tmp_path: Path) -> None:
    models = tmp_path / "models"
    folder = write_hub_repo(models, "org/torn", {MAIN: model_files()})
    next(p for p in (folder / "blobs").iterdir() if p.stat().st_size > 100).unlink()
    age(folder, 3 * DAY)
    report = run_audit(AuditRun(models, PrunePolicy(grace_seconds=60), "prune"),
                       MemoryState())
    [entry] = report["models"]
    assert (entry["name"], entry["kind"], entry["status"]) == ("org/torn", "hub", "BROKEN")
    assert entry["integrity"]["problems"][0].startswith("Blob missing (broken symlink)")
    assert report["pruned"] == [] and folder.is_dir()


def test_every_host_run_picks_one_worker_per_host_and_directory() -> None:
    from tasks.queue.maintenance_tasks import pick_targets

    def reply(node: str, host: str, model_dir: str, role: str = "ocr") -> dict[str, Any]:
        return {node: {"host": host, "model_dir": model_dir, "model": "", "role": role}}

    replies = [reply("ctl@a", "a", "/m", "control"), reply("vlm@a", "a", "/m"),
               reply("cpu@a", "a", "/m"), reply("cpu@a2", "a", "/other"),
               reply("cpu@b", "b", "/m"), {"old@c": {"error": "unknown command"}}]
    assert pick_targets(replies) == [
        {"host": "a", "model_dir": "/m", "node": "cpu@a"},
        {"host": "a", "model_dir": "/other", "node": "cpu@a2"},
        {"host": "b", "model_dir": "/m", "node": "cpu@b"}]
    assert pick_targets([reply("ctl@a", "a", "/m", "control")])[0]["node"] == "ctl@a"


def test_a_linked_repo_folder_is_never_entered(tmp_path: Path) -> None:
    models, outside = tmp_path / "models", tmp_path / "outside"
    _hub_dir(tmp_path)
    folder = f"models--{REPO.replace('/', '--')}"
    outside.mkdir()
    os.rename(models / folder, outside / folder)
    os.symlink(outside / folder, models / folder)
    report = run_audit(AuditRun(models, PrunePolicy(), "prune"), MemoryState())
    assert [p for p in report["pruned"] if p["name"] == REPO] == []
    assert (outside / folder / "blobs" / "stale.incomplete").exists()
    assert sorted(os.listdir(outside / folder / "snapshots")) == [MAIN, OLD_REV, PINNED]
    with pytest.raises(PathNotAllowed):
        remove_partial_blob(models, f"{folder}/blobs/stale.incomplete")
