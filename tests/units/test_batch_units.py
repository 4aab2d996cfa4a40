"""Batches without workers: manifest lines, sources, the local target, the store, metrics.

The pure pieces of tasks/lifecycle/batch_sources.py and tasks/state/batch_store.py
(a real redis-server for the store and the exporter's batch gauges).
"""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tasks.lifecycle.batch_local import LocalFolder, LocalTarget, local_documents
from tasks.lifecycle.batch_manifest import (
    Indexes,
    ManifestIndex,
    compose_from_parts,
    has_lines,
    latest_lines,
    write_part,
)
from tasks.lifecycle.batch_sources import (
    Document,
    ManifestSource,
    manifest_document,
    options_digest,
    output_name,
    same_read,
)
from tasks.lifecycle.fetcher import Fetcher
from tasks.metrics.fleet_metrics import FleetCollector
from tasks.records.batches import BatchRecord, BatchState
from tasks.records.jobs import Reservation
from tasks.records.request import JobRequest
from tasks.settings import Settings
from tasks.state.batch_store import BatchStore, progress_of


def test_a_manifest_line_names_a_document_and_its_own_options() -> None:
    line = json.dumps({"url": "s3://b/k/a.pdf", "options": {"lang": "vie", "blob": "x"}})
    document = manifest_document(line.encode())
    assert document == Document("s3://b/k/a.pdf", "b/k/a.pdf", {}, {"lang": "vie"}, at="0")
    at = manifest_document(b"{}\n", 120)  # an object naming no url: a line of its own
    assert at == Document("", "manifest line at byte 120", refused="no_url", at="120")
    plain = manifest_document(b"https://files.example.com/scans/b.png\n")
    assert plain is not None and plain.name == "files.example.com/scans/b.png"
    assert manifest_document(b"   \n") is None


def test_a_manifest_line_names_its_url_in_one_spelling() -> None:
    """Two spellings of one URL are one document: the batch reads it once."""
    for spelling in ("HTTPS://Files.Example.com:443/scans/%7Eb/x.png",
                     "https://files.example.com/scans/./~b/x.png",
                     "https://files.example.com/scans/c/../%7eb/x.png"):
        document = manifest_document(json.dumps({"url": spelling}).encode())
        assert document is not None
        assert document.url == "https://files.example.com/scans/~b/x.png"
        assert document.name == "files.example.com/scans/~b/x.png"
    s3 = manifest_document(b"S3://bkt/k/./a.pdf")
    assert s3 is not None and (s3.url, s3.name) == ("s3://bkt/k/a.pdf", "bkt/k/a.pdf")
    # a URL that is none is kept as written: its job is refused with its code
    assert manifest_document(b"s3://b/k/\x01a.pdf") == Document(
        "s3://b/k/\x01a.pdf", "b/k/\x01a.pdf", {}, {}, at="0")


def test_a_line_matches_only_the_same_version_and_options() -> None:
    options = {"output": "text", "lang": None}
    assert options_digest(options) == options_digest({"output": "text"})
    document = Document("s3://b/a.png", "a.png", {"etag": '"1"', "size": 3})
    line = {"source_version": {"etag": '"1"', "size": 3},
            "options_digest": options_digest(options)}
    assert same_read(line, document, options_digest(options))
    assert not same_read(line, document, options_digest({"output": "json"}))
    changed = Document("s3://b/a.png", "a.png", {"etag": '"2"', "size": 3})
    assert not same_read(line, changed, options_digest(options))
    assert not same_read(None, document, options_digest(options))
    assert output_name("a/b.pdf", "pdf") == "a/b.pdf.ocr.pdf"


def test_the_local_target_and_the_folder_listing(tmp_path: Path) -> None:
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    (source / "a.png").write_bytes(b"1")
    (source / "sub" / "b.png").write_bytes(b"22")
    (source / ".hidden").write_bytes(b"x")
    target = LocalTarget(source / "out")  # inside the source: never listed
    listed = [d.name for d in local_documents(source, source / "out")]
    assert listed == ["a.png", "sub/b.png"]
    assert not has_lines(target)
    for name in reversed(listed):  # one part a line, the later name first
        document = next(d for d in local_documents(source, None) if d.name == name)
        write_part(target, [{"name": name, "source_version": document.version,
                             "status": "SUCCESS"}])
    assert has_lines(target)
    assert [d.name for d in local_documents(source, source / "out")] == listed
    index = ManifestIndex.read(target)
    assert index.line("sub/b.png") == {"source_version": {"size": 2, "mtime": (
        source / "sub" / "b.png").stat().st_mtime_ns}, "options_digest": "",
        "status": "SUCCESS"}
    assert index.line("nothing") is None
    assert compose_from_parts(target) == 2
    lines = (source / "out" / "manifest.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == listed


def test_the_store_and_the_exporters_batch_gauges(own_redis_url: str) -> None:
    client = redis.Redis.from_url(own_redis_url)
    store = BatchStore(client, 60)
    batch_id = store.create(BatchRecord(id="", source="s3://b/", target="s3://o/",
                                        client="alice", options={"output": "text"})).id
    store.sent(batch_id, "job-1", {"url": "s3://b/a", "name": "a"}, "a", listed=1)
    store.passed(batch_id, "b", listed=1, skipped=1)
    assert store.flight(batch_id) == {"job-1": {"url": "s3://b/a", "name": "a"}}
    assert store.settle(batch_id, {"job-1": {"done": 1, "pages_done": 2}}) == ["job-1"]
    assert store.settle(batch_id, {"job-1": {"done": 1, "pages_done": 2}}) == []  # once only
    for job in ("job-2", "job-3"):
        store.sent(batch_id, job, {"url": f"s3://b/{job}", "name": job}, job)
    # a step's endings settled at once; one settled already is counted no more
    assert store.settle(batch_id, {"job-2": {"done": 1, "pages_done": 3}, "job-1": {"done": 1},
                                   "job-3": {}}) == ["job-2", "job-3"]
    assert store.flight(batch_id) == {} and store.settle(batch_id, {}) == []
    store.count(batch_id, done=-1, pages_done=-3)  # the counts below are job-1's
    assert store.lock(batch_id, "me", 5) and not store.lock(batch_id, "other", 5)
    assert not store.unlock(batch_id, "other") and not store.extend(batch_id, "other", 9)
    assert not store.lock(batch_id, "other", 5)  # only its holder lets it go
    assert store.extend(batch_id, "me", 9) and store.unlock(batch_id, "me")
    assert store.lock(batch_id, "other", 5) and store.unlock(batch_id, "other")
    shown = progress_of(store.get(batch_id), store.in_flight(batch_id))
    assert shown["documents"] == {"total": None, "listed": 2, "done": 1, "failed": 0,
                                  "skipped": 1, "skipped_failed": 0, "running": 0}
    assert shown["pages"] == {"done": 2, "failed": 0} and shown["state"] == "RUNNING"
    families = {f.name: f for f in FleetCollector(client, ()).collect()}
    assert families["ocr_batches_running"].samples[0].value == 1
    values = {s.labels["state"]: s.value for s in families["ocr_batch_documents"].samples
              if s.labels["batch"] == batch_id and s.labels["client"] == "alice"}
    assert values == {"done": 1, "failed": 0, "skipped": 1, "running": 0}
    store.update(batch_id, listed_all=True)
    store.end(batch_id, BatchState.SUCCESS)
    assert store.running() == [] and store.get(batch_id).state is BatchState.SUCCESS
    assert progress_of(store.get(batch_id), 0)["documents"]["total"] == 2


def test_the_manifest_is_composed_from_the_parts_each_name_its_latest_line(
        tmp_path: Path) -> None:
    target = LocalTarget(tmp_path)
    write_part(target, [{"name": "b", "status": "FAILURE"}, {"name": "a", "status": "SUCCESS"}])
    write_part(target, [])  # nothing settled: no part
    write_part(target, [{"name": "b", "status": "SUCCESS"}])  # a retry's line
    assert len(list((tmp_path / ".manifest-parts").iterdir())) == 2
    assert compose_from_parts(target) == 2
    lines = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert lines == [{"name": "a", "status": "SUCCESS"}, {"name": "b", "status": "SUCCESS"}]


def test_the_index_holds_each_documents_latest_line_and_the_failed_ones_in_order(
        tmp_path: Path) -> None:
    target = LocalTarget(tmp_path)
    version = {"etag": '"1"', "size": 3}

    def line(name: str, status: str, **more: object) -> dict[str, object]:
        return {"name": name, "source": f"s3://b/{name}", "source_version": version,
                "options": {"output": "text"}, "options_digest": "d1", "status": status,
                **more}

    write_part(target, [line("c", "FAILURE"), line("a", "PARTIAL"), line("b", "SUCCESS"),
                        line("m", "FAILURE", line_at=40), line("m", "FAILURE", line_at=7)])
    # a later step: c read again and right; m's line at 90 a duplicate of its line at 7
    write_part(target, [line("c", "SUCCESS"),
                        {**line("m", "SKIPPED", line_at=90, duplicate_of=7),
                         "source_version": {}}])
    index = ManifestIndex.read(target)
    assert index.line("c") == {"source_version": version, "options_digest": "d1",
                               "status": "SUCCESS"}
    # a duplicate's line shows no read: the name's latest read stays its own line's
    assert index.line("m") == {"source_version": version, "options_digest": "d1",
                               "status": "FAILURE"}
    cursor, failed = "", []
    for _ in range(4):  # a retry's source, two at a time from its cursor
        page, done = index.page(cursor, 2)
        failed += [(d.url, d.name, d.at, d.options) for d, _ in page]
        cursor = page[-1][1] if page else cursor
        if done:
            break
    assert done and failed == [("s3://b/a", "a", "", {"output": "text"}),
                                ("s3://b/m", "m", "7", {"output": "text"}),
                                ("s3://b/m", "m", "40", {"output": "text"})]
    assert index.page("not a cursor", 10)[0][0][0].name == "a"  # from the start
    indexes, reads = Indexes(), []

    def read() -> ManifestIndex:
        reads.append(1)
        return ManifestIndex.read(target)

    assert indexes.of("b1", ("chain", "list"), read) is indexes.of("b1", ("chain", "list"), read)
    indexes.of("b1", ("chain", "retry"), read)  # a new run: read again
    indexes.drop("b1")
    indexes.of("b1", ("chain", "retry"), read)
    assert len(reads) == 3


class SendingPorts:
    """Ports that admit every document and record the jobs sent, numbered from `first`."""

    def __init__(self, first: int = 1) -> None:
        self.first = first
        self.sent: list[dict[str, object]] = []

    def admit(self, record: BatchRecord, request: JobRequest) -> Reservation:
        return Reservation("", record.client, "ocr", "batch")

    def release(self, reservation: Reservation) -> None:
        return None

    def send(self, record: BatchRecord, request: JobRequest,
             reservation: Reservation | None = None, replacing: str = "") -> str:
        self.sent.append(request.to_kwargs())
        return f"job-{self.first + len(self.sent) - 1}"


class StalledPorts(SendingPorts):
    """Ports whose one job in flight never ends: its ending died with its host."""

    def __init__(self) -> None:
        super().__init__(first=2)

    def endings(self, record: BatchRecord, job_ids: list[str]) -> dict[str, object]:
        return {}

    def stalled(self, job_ids: list[str]) -> list[str]:
        return [j for j in job_ids if j == "job-1"]


def test_a_document_whose_ending_died_is_sent_again(own_redis_url: str,
                                                    tmp_path: Path) -> None:
    from tasks.lifecycle.batches import BatchDriver

    store = BatchStore(redis.Redis.from_url(own_redis_url), 60)
    batch_id = store.create(BatchRecord(id="", source="s3://b/", target="s3://o/",
                                        options={"output": "text"})).id
    document = {"url": "s3://b/a.png", "name": "a.png",
                "version": {"etag": '"e1"', "size": 3}, "options": {}}
    store.sent(batch_id, "job-1", document, "a.png", listed=1)
    ports = StalledPorts()
    driver = BatchDriver(store, ports, Settings.from_env({}))  # type: ignore[arg-type]
    assert driver._collect(store.get(batch_id), LocalTarget(tmp_path)) == 0
    assert ports.sent == [{"url_etag": '"e1"', "url": "s3://b/a.png",
                           "filename": "a.png", "result_url": "s3://o/a.png.txt"}]
    assert store.flight(batch_id) == {"job-2": document}
    assert store.get(batch_id).listed == 1


class EndingPorts:
    """Ports whose jobs in flight end as `done` says; records what the driver asks."""

    def __init__(self) -> None:
        self.done: dict[str, dict[str, object]] = {}
        self.asked: list[list[str]] = []
        self.stalled_asked: list[list[str]] = []
        self.forgotten: list[str] = []

    def endings(self, record: BatchRecord, job_ids: list[str]) -> dict[str, object]:
        self.asked.append(job_ids)
        return {j: self.done[j] for j in job_ids if j in self.done}

    def stalled(self, job_ids: list[str]) -> list[str]:
        self.stalled_asked.append(job_ids)
        return []

    def forget(self, job_ids: list[str]) -> None:
        self.forgotten += job_ids


def test_a_step_collects_its_endings_at_once_into_one_part(own_redis_url: str,
                                                           tmp_path: Path) -> None:
    from tasks.lifecycle.batches import BatchDriver

    store = BatchStore(redis.Redis.from_url(own_redis_url), 60)
    batch_id = store.create(BatchRecord(id="", source="s3://b/", target="s3://o/",
                                        options={"output": "text"})).id
    for name in ("a", "b", "c", "d"):
        store.sent(batch_id, f"job-{name}", {"url": f"s3://b/{name}.png", "name": f"{name}.png",
                                             "version": {"etag": '"e"'}}, name, listed=1)
    ports = EndingPorts()
    ports.done = {"job-a": {"id": "job-a", "status": "SUCCESS", "pages": [{}, {}]},
                  "job-b": {"id": "job-b", "status": "FAILURE", "error": {"code": "x"}},
                  "job-c": {"id": "job-c", "status": "CANCELLED"}}
    driver = BatchDriver(store, ports, Settings.from_env({}))  # type: ignore[arg-type]
    target = LocalTarget(tmp_path)
    assert driver._collect(store.get(batch_id), target) == 3
    # one question for the whole flight; the job still running asked whether it stalled
    assert len(ports.asked) == 1 and sorted(ports.asked[0]) == [
        "job-a", "job-b", "job-c", "job-d"]
    assert ports.stalled_asked == [["job-d"]]
    parts = list((tmp_path / ".manifest-parts").iterdir())
    lines = [json.loads(line) for line in parts[0].read_text().splitlines()]
    # one part for the step; the cancelled document has no line (a later batch reads it)
    assert len(parts) == 1 and sorted(line["name"] for line in lines) == ["a.png", "b.png"]
    assert list(store.flight(batch_id)) == ["job-d"]
    record = store.get(batch_id)
    assert (record.done, record.failed, record.pages_done) == (1, 1, 2)
    assert sorted(ports.forgotten) == ["job-a", "job-b", "job-c"]
    # the next step: nothing ended, and the stalled endings are not asked again so soon
    assert driver._collect(store.get(batch_id), target) == 0
    assert len(ports.asked) == 2 and ports.stalled_asked == [["job-d"]]


def test_a_batch_record_round_trips_through_its_hash_with_typed_fields() -> None:
    record = BatchRecord(id="b1", source="s3://b/", target="s3://o/",
                         options={"output": "json"}, overwrite=True, listed_all=True,
                         error={"code": "url_not_allowed"}, created=12.5, done=3,
                         skipped=2, skipped_failed=1)
    raw = record.to_hash()
    assert raw["overwrite"] == "true" and raw["cancel"] == "false" and "ended" not in raw
    assert BatchRecord.from_hash(raw) == record
    assert not BatchRecord.from_hash({}).exists
    # the collection's state: a document skipped as failed already counts as failed
    assert record.ending() is BatchState.PARTIAL
    assert record.with_(skipped_failed=0).ending() is BatchState.SUCCESS
    assert BatchRecord(id="x", failed=2).ending() is BatchState.FAILURE


def test_a_manifest_line_past_the_limit_is_refused_and_the_read_goes_on(
        tmp_path: Path) -> None:
    settings = Settings.from_env({"OCR_BATCH_MAX_LINE_BYTES": "100",
                                  "OCR_ALLOWED_URLS": "https://files.example.com/"})
    target = LocalTarget(tmp_path)
    long_line = json.dumps({"url": "https://files.example.com/" + "x" * 5000})
    body = (f"https://files.example.com/a.png\n{long_line}\n"
            "https://files.example.com/b.png\n").encode()
    # an https manifest already copied under the target: ranges of the copy are read
    target.put(".batch-source/b1.jsonl", body, "application/jsonl")
    source = ManifestSource("https://files.example.com/m.jsonl", settings,
                            Fetcher.for_client(settings, None), target, "b1")
    cursor, seen = "", []
    for _ in range(5):
        page, done = source.page(cursor, 10)
        seen += [(d.name, d.refused) for d, _ in page]
        cursor = page[-1][1] if page else cursor
        if done:
            break
    assert seen == [("files.example.com/a.png", ""),
                    ("manifest line at byte 32", "line_too_long"),
                    ("files.example.com/b.png", "")]


def test_a_local_folder_is_listed_in_name_order_from_a_cursor(tmp_path: Path) -> None:
    for name in ("a-c.png", "a/b.png", "b.png", ".hidden", "out/x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"1")
    folder = LocalFolder(tmp_path, tmp_path / "out")
    first, done = folder.page("", 2)
    assert [d.name for d, _ in first] == ["a-c.png", "a/b.png"] and not done
    rest, done = folder.page(first[-1][1], 2)
    assert [d.name for d, _ in rest] == ["b.png"] and done


def test_a_listed_document_over_the_input_limit_is_refused_unread(own_redis_url: str,
                                                                 tmp_path: Path) -> None:
    from tasks.lifecycle.batches import PASSED, SENT, BatchDriver

    store = BatchStore(redis.Redis.from_url(own_redis_url), 60)
    record = store.get(store.create(BatchRecord(id="", source="s3://b/", target="s3://o/",
                                                options={"output": "text"})).id)
    ports = SendingPorts()
    driver = BatchDriver(store, ports,  # type: ignore[arg-type]
                         Settings.from_env({"OCR_MAX_INPUT_MB": "1"}))
    target = LocalTarget(tmp_path)
    small = Document("s3://b/small.png", "small.png", {"etag": '"e1"', "size": 2**20})
    large = Document("s3://b/large.png", "large.png", {"etag": '"e2"', "size": 2**20 + 1})
    assert driver._one(record, target, small, "small.png", None, False) == SENT
    # Its job would read it with no HEAD: the listing's size refuses it, no job is sent.
    assert driver._one(record, target, large, "large.png", None, False) == PASSED
    assert [kwargs["url"] for kwargs in ports.sent] == ["s3://b/small.png"]
    assert ports.sent[0]["url_etag"] == '"e1"'
    lines = latest_lines(target)
    assert [(line["name"], line["status"], line["error"]) for line in lines] == [
        ("large.png", "FAILURE", "input_too_large")]
    counts = store.get(record.id)
    assert (counts.listed, counts.failed, store.in_flight(record.id)) == (2, 1, 1)


def test_batch_steps_hold_a_few_threads_a_client_and_leave_the_pools_last() -> None:
    from types import SimpleNamespace

    from tasks.batch_worker import _slots, size_slots

    app = SimpleNamespace(ocr_settings=SimpleNamespace(batch_threads_per_client=2))
    size_slots(app, 4)
    slots = _slots(app)
    with slots.held("a") as one, slots.held("a") as two, slots.held("a") as three:
        assert (one, two, three) == (True, True, False)  # a's two threads taken
        with slots.held("b") as other, slots.held("c") as last:
            assert (other, last) == (True, False)  # the fourth: cancels' and callbacks'
    with slots.held("a") as again:
        assert again  # each let go at its block's end
    size_slots(app, 1)
    assert _slots(app).total == 1

