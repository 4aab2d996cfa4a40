"""Every role with its own Redis user, over verified TLS, against an ACL-enabled redis-server.

The redis-server speaks only TLS and knows only the users of tasks/redis_users.py,
written by scripts/redis_acl.py as the kits' Redis containers write them (`default`
off). Each role runs as its Procfile line starts it, its REDIS_URL naming its own user:
a worker (fake engine) and the control worker, the API, beat (its schedule every
minute), Flower, the metrics exporter; clients (the Python one, and the Node one where
node is installed), an operator (`ocr_admin.py`), and KEDA's reader. They read images
and a PDF sent by the clients and through the API, a callback is posted, a job is
cancelled, Flower lists the workers and a task's result, the exporter serves its
metrics and the figure KEDA reads, every role's health commands pass; and Redis's ACL
LOG shows nothing refused. Then each user is refused what is not its own, plaintext
and unverified connections are refused, every role refuses to start on a placeholder
secret, and a restart keeps what the workers took. Last, beat's audit (sent at the top
of a minute) reaches a worker, and neither had anything refused.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests

from tasks.broker import layout
from tasks.client import OcrClient
from tasks.records.clients import CLIENT_HEADER
from tasks.settings import Settings
from tests.api_server import ApiServer
from tests.harness import (
    FAST_PAGES,
    ROOT,
    ProcfileProcess,
    Worker,
    eventually,
    fake_env,
    free_port,
    kill_all,
)
from tests.image_fixtures import png
from tests.moto_s3 import MotoS3
from tests.pdf_fixtures import image_pdf, plain_pages
from tests.redis_tls import AclRedisServer, make_certificates

FLOWER_AUTH = ("ocr", "flower-pass-4f1e")
HEALTH_ROLES = ("worker", "control", "api", "beat", "flower", "metrics")


class Receiver:
    """A callback receiver on loopback: records each POST's path."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        paths = self.paths

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                paths.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@dataclass
class Fleet:
    redis: AclRedisServer
    receiver: Receiver
    processes: dict[str, ProcfileProcess]
    ports: dict[str, int]
    s3: MotoS3

    def env(self, user: str) -> dict[str, str]:
        """The role's environment: its own REDIS_URL, callbacks and moto's S3 allowed."""
        return {"REDIS_URL": self.redis.url(user),
                "OCR_CALLBACK_ALLOWED_HOSTS": f"127.0.0.1:{self.receiver.port}",
                "OCR_ALLOWED_URLS": "s3://acl-src/,s3://acl-out/", **self.s3.env()}

    def get(self, role: str, path: str, **kwargs: object) -> requests.Response:
        return requests.get(f"http://127.0.0.1:{self.ports[role]}{path}", timeout=30,
                            **kwargs)  # type: ignore[arg-type]


def _answers(fleet: Fleet, role: str, path: str, auth: tuple[str, str] | None = None) -> bool:
    try:
        return fleet.get(role, path, auth=auth).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("acl")
    server = AclRedisServer(tmp / "redis").start()
    s3 = MotoS3(tmp / "moto.log").start()
    for bucket in ("acl-src", "acl-out"):
        s3.client().create_bucket(Bucket=bucket)
    fleet = Fleet(server, Receiver(), {}, {r: free_port() for r in ("flower", "metrics")},
                  s3)
    started = fleet.processes
    try:
        # Every process spawned first, then each waited for: their start-ups overlap.
        worker = started["worker"] = Worker(tmp / "worker.log", {
            **fake_env(), **FAST_PAGES, **fleet.env("worker"), "OCR_CONCURRENCY": "2",
            "FAKE_PAGE_SECONDS": "0.2"})
        control = started["control"] = Worker(tmp / "control.log", {**fake_env(),
                                                                    **fleet.env("control")},
                                              process="control")
        api = started["api"] = ApiServer(tmp / "api.log", {**fleet.env("api")})
        fleet.ports["api"] = api.port
        started["metrics"] = ProcfileProcess("metrics", tmp / "metrics.log", {
            **fleet.env("metrics"), "METRICS_PORT": str(fleet.ports["metrics"])})
        started["flower"] = ProcfileProcess("flower", tmp / "flower.log", {
            **fleet.env("flower"), "FLOWER_PORT": str(fleet.ports["flower"]),
            "FLOWER_DB": str(tmp / "flower.db"), "FLOWER_BASIC_AUTH": ":".join(FLOWER_AUTH)},
            drop=("FLOWER_",))
        started["beat"] = ProcfileProcess("beat", tmp / "beat.log", {
            **fleet.env("beat"), "OCR_AUDIT_CRONTAB": "* * * * *"})
        for process in started.values():
            process.spawn()
        worker.wait_ready(timeout=180)
        control.wait_ready(timeout=180)
        api.wait_up(timeout=120)
        started["metrics"].wait_until(lambda: _answers(fleet, "metrics", "/metrics"), 120,
                                      "serving")
        started["flower"].wait_until(
            lambda: _answers(fleet, "flower", "/healthcheck"), 180, "serving")
        yield fleet
    finally:
        kill_all(list(started.values()))  # the module is done: no warm shutdown
        server.stop()
        s3.stop()


def _user_client(fleet: Fleet, user: str) -> OcrClient:
    return OcrClient(Settings.from_env({"REDIS_URL": fleet.redis.url(user)}))


def _admin(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    """`ocr_admin.py ARGS` as an operator runs it, with the admin user."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    return subprocess.run([sys.executable, "ocr_admin.py", *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=120,
                          env={**env, "REDIS_URL": fleet.redis.url("admin")})


def test_every_role_works_with_its_own_user_and_nothing_is_refused(fleet: Fleet,
                                                                  tmp_path: Path) -> None:
    fleet.redis.acl_log_reset()
    client = _user_client(fleet, "client")
    try:
        hook = f"http://127.0.0.1:{fleet.receiver.port}/client"
        image = client.submit(png(90))
        pdf = client.submit(image_pdf(plain_pages(3)), filename="three.pdf", callback_url=hook)
        results = client.wait([image, pdf], timeout=180)
        assert [results[j]["status"] for j in (image, pdf)] == ["SUCCESS", "SUCCESS"]
        assert results[pdf]["page_count"] == 3
        waiting = client.submit(image_pdf(plain_pages(60)), filename="long.pdf",
                                priority="batch")
        eventually(lambda: client.status(waiting).total > 0, 120, "the long PDF started")
        assert client.cancel([waiting])[waiting] in ("cancelled", "cancelling")
        assert client.wait([waiting], timeout=120)[waiting]["status"] == "CANCELLED"
    finally:
        client.close()
    node = shutil.which("node")
    if node is not None:  # the Node client, as the `client` user too
        scan = tmp_path / "scan.png"
        scan.write_bytes(png(91))
        done = subprocess.run([node, str(ROOT / "clients" / "node" / "ocr_client.js"),
                               "--redis", fleet.redis.url("client"), str(scan)],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, "NODE_EXTRA_CA_CERTS": str(
                                  fleet.redis.certs.ca)})
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "SUCCESS"

    made = _admin(fleet, "tokens", "create", "acl-test", "--json", "--pages-per-day", "1000",
                  "--allowed-url", "s3://acl-src/", "--allowed-url", "s3://acl-out/")
    assert made.returncode == 0, made.stderr
    snapshot = tmp_path / "acl.rdb"  # the backup CronJob's: SYNC as `admin`
    backup = _admin(fleet, "backup", str(snapshot))
    assert backup.returncode == 0 and snapshot.read_bytes().startswith(b"REDIS"), backup.stderr
    auth = {"Authorization": f"Bearer {json.loads(made.stdout)['token']}"}
    api = f"http://127.0.0.1:{fleet.ports['api']}"
    sent = requests.post(f"{api}/v1/jobs", headers=auth, timeout=60,
                         files={"file": ("a.pdf", image_pdf(plain_pages(2)), "application/pdf")},
                         data={"callback_url": f"http://127.0.0.1:{fleet.receiver.port}/api",
                               "output": "json"})
    assert sent.status_code == 202, sent.text
    job = sent.json()["id"]
    status: dict[str, object] = {}

    def ended() -> bool:
        status.update(requests.get(f"{api}/v1/jobs/{job}", headers=auth, timeout=30).json())
        return status["status"] not in ("QUEUED", "RUNNING")

    eventually(ended, 180, lambda: f"the API's job to end: {status}", interval=0.5)
    assert status["status"] == "SUCCESS", status
    assert requests.get(f"{api}/v1/jobs/{job}/result", headers=auth,
                        timeout=30).status_code == 200
    assert requests.get(f"{api}/readyz", headers=auth, timeout=30).json()["ready"] is True
    # The pages metered (the worker), checked against the token's cap (the worker and
    # the API), shown to the client (the API) and to the operator (the admin user).
    usage = requests.get(f"{api}/v1/usage", headers=auth, timeout=30).json()
    assert (usage["today"], usage["pages_per_day"]) == (2, 1000), usage
    report = _admin(fleet, "usage", "--client", "acl-test")
    assert report.returncode == 0, report.stderr
    assert json.loads(report.stdout)["clients"][0]["total"] == 2
    _batches(fleet, api, auth)  # after the usage read: a batch's pages are the client's too
    eventually(lambda: {"/client", "/api"} <= set(fleet.receiver.paths), 120,
               lambda: f"both callbacks posted: {fleet.receiver.paths}")

    workers = fleet.get("flower", "/api/workers?refresh=1", auth=FLOWER_AUTH)
    assert workers.status_code == 200 and len(workers.json()) >= 2, workers.text
    lengths = fleet.get("flower", "/api/queues/length", auth=FLOWER_AUTH)  # its broker page's
    assert lengths.status_code == 200, lengths.text
    assert "ocr" in {q["name"] for q in lengths.json()["active_queues"]}, lengths.text
    assert fleet.get("flower", f"/api/task/result/{image}", auth=FLOWER_AUTH).json()[
        "state"] == "SUCCESS"
    scraped = fleet.get("metrics", "/metrics").text
    assert "ocr_jobs_total" in scraped and 'client="acl-test"' in scraped
    depths: list[str] = []

    def drained() -> bool:
        depth = fleet.get("metrics", "/v1/queues/ocr,ocr-fake/depth")
        assert depth.status_code == 200, (depth.text, fleet.redis.acl_log()[:3])
        depths.append(depth.text)
        return depth.json()["value"] == 0

    # The last callback's task is still held from its POST until it has returned and
    # its acknowledgement is written: the queues read empty once it is.
    eventually(drained, 30, lambda: f"the queues drained: {depths[-1:]}")
    keda = redis.Redis.from_url(fleet.redis.url("keda"))
    assert keda.llen("ocr") == 0  # what KEDA's redis trigger sends
    keda.close()

    for role in HEALTH_ROLES:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
        env.update({"REDIS_URL": fleet.redis.url(role), "WORKER_NAME": getattr(
            fleet.processes[role], "name", "cpu"), **{f"{r.upper()}_PORT": str(p)
                                                       for r, p in fleet.ports.items()}})
        for probe in ("live", "ready"):
            done = subprocess.run([sys.executable, "-m", "scripts.health", role, probe],
                                  cwd=ROOT, capture_output=True, text=True, timeout=60,
                                  env=env)
            assert done.returncode == 0, f"{role} {probe}: {done.stderr}"
    refused = [e for e in fleet.redis.acl_log() if e["username"] != "default"]
    assert refused == [], json.dumps(refused, indent=1)[:4000]


def _batches(fleet: Fleet, api: str, auth: dict[str, str]) -> None:
    """A batch through the API (api user; its steps: control) and submit.py (client)."""
    for i in range(3):
        fleet.s3.client().put_object(Bucket="acl-src", Key=f"b/{i}.png", Body=png(100 + i))
    sent = requests.post(f"{api}/v1/batches", headers=auth, timeout=60, json={
        "source": "s3://acl-src/b/", "result_url": "s3://acl-out/api/"})
    assert sent.status_code == 202, sent.text
    batch: dict[str, object] = {}

    def batch_ended() -> bool:
        batch.update(requests.get(f"{api}/v1/batches/{sent.json()['id']}", headers=auth,
                                  timeout=30).json())
        return batch["state"] != "RUNNING"

    eventually(batch_ended, 120, lambda: f"the batch to end: {batch}", interval=0.5)
    assert batch["state"] == "SUCCESS", batch
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OCR_", "REDIS_"))}
    cli = {**env, **fleet.env("client")}
    started = subprocess.run([sys.executable, "submit.py", "batch", "s3://acl-src/b/",
                              "--result-url", "s3://acl-out/cli/", "--no-wait"], cwd=ROOT,
                             text=True, capture_output=True, timeout=120, env=cli)
    assert started.returncode == 0, started.stderr
    waited = subprocess.run([sys.executable, "submit.py", "batch", "wait",
                             started.stdout.strip(), "--timeout", "120"], cwd=ROOT,
                            text=True, capture_output=True, timeout=180, env=cli)
    assert waited.returncode == 0 and "SUCCESS" in waited.stdout, waited.stderr
    assert "ocr_batches_running" in fleet.get("metrics", "/metrics").text


# One command each user may not send (a key, a command or a channel not its own).
DENIED = {
    "worker": ("GET", "ocr:api:token:0123"),
    "control": ("GET", "ocr:models:report"),
    "api": ("HGETALL", "ocr:api:webhook:someone"),
    "beat": ("GET", "ocr:blob:0123456789"),
    "flower": ("LPUSH", "ocr", "a task Flower must not send"),
    "metrics": ("HSET", "ocr:metrics:nodes", "x", "1"),
    "keda": ("LPOP", "ocr"),
    "client": ("HGETALL", "ocr:api:clients"),
    "admin": ("CONFIG", "GET", "requirepass"),
}


@pytest.mark.parametrize("user", sorted(DENIED))
def test_a_command_outside_the_users_rules_is_refused(fleet: Fleet, user: str) -> None:
    client = redis.Redis.from_url(fleet.redis.url(user))
    try:
        assert client.ping()
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*DENIED[user])
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command("FLUSHALL")
    finally:
        client.close()


# Flower's "apply task" as its UI sends it (to the task's queue, `ocr`), and with a
# client's header (to that client's lane) to a queue no worker reads, where a message
# it had pushed would still be found.
UNREAD = "ocr-unread"
FLOWER_SENDS = (({}, "ocr", ""),
                ({"queue": UNREAD, "headers": {CLIENT_HEADER: "flower-sent"}}, UNREAD,
                 "flower-sent"))


def _flower_refusals(fleet: Fleet) -> Counter[tuple[str, str]]:
    """How often Redis has refused Flower's user each (reason, command or key)."""
    refused: Counter[tuple[str, str]] = Counter()
    for e in fleet.redis.acl_log():
        if e["username"] == "flower":
            refused[str(e["reason"]), str(e["object"])] += int(str(e["count"]))
    return refused


def _queue_lists(queue: str) -> list[str]:
    return [layout.queue_list(queue, step) for step in layout.PRIORITY_STEPS]


def _refuses_a_message(queue: str, reason: str, what: str) -> bool:
    """Whether a refusal keeps a message out of `queue`: its push, or a key of it.

    A key of its lists, of their lanes, or a list's ring of lanes (the queue's declare
    counts the messages in its lanes by them).
    """
    if reason == "command":
        return what in ("lpush", "rpush")
    rings = [layout.list_ring_key(name) for name in _queue_lists(queue)]
    lanes = tuple(layout.list_lane_key(name, "") for name in _queue_lists(queue))
    return reason == "key" and (what in (*_queue_lists(queue), *rings)
                                or what.startswith(lanes))


def _holding(fleet: Fleet, queue: str, task_id: str, client: str) -> list[str]:
    """Where the task `task_id` waits: `queue`'s lists and lanes holding its message.

    And the rings of lanes that hold `client` (a lane's push puts its client there).
    """
    admin = fleet.redis.client()
    try:
        lanes = [layout.list_lane_key(name, "*") for name in _queue_lists(queue)]
        keys = [*_queue_lists(queue), *(k.decode() for pattern in lanes
                                       for k in admin.scan_iter(pattern))]
        held = [k for k in keys if any(task_id.encode() in m for m in admin.lrange(k, 0, -1))]
        rings = [layout.list_ring_key(name) for name in _queue_lists(queue)]
        return held + [ring for ring in rings
                       if client and admin.lpos(ring, client) is not None]
    finally:
        admin.close()


@pytest.mark.parametrize(("options", "queue", "client"), FLOWER_SENDS,
                         ids=("ocr", "lane"))
def test_flower_cannot_send_a_task(fleet: Fleet, options: dict[str, object], queue: str,
                                   client: str) -> None:
    """Redis refuses Flower's user its task's message, and nothing of it is queued.

    Its publish declares the queue first (EXISTS over the queue's lists and the rings
    of lanes), and Flower's user has no key of the lanes, so the push never goes; past
    the declare it has no LPUSH nor any lane's key (test_redis_acl_matrix.py). Only
    the refusals of this call count: DENIED refuses Flower an LPUSH too.
    """
    before, task_id = _flower_refusals(fleet), str(uuid.uuid4())
    sent = requests.post(f"http://127.0.0.1:{fleet.ports['flower']}/api/task/async-apply/"
                         "ocr.document", json={"kwargs": {}, "task_id": task_id, **options},
                         auth=FLOWER_AUTH, timeout=60)
    assert sent.status_code >= 500, sent.text
    refused = _flower_refusals(fleet) - before
    assert refused and all(_refuses_a_message(queue, reason, what)
                           for reason, what in refused), (sent.text, refused)
    assert _holding(fleet, queue, task_id, client) == []
    assert task_id not in fleet.processes["worker"].log()  # nor taken from `ocr`


def test_default_user_other_passwords_and_plaintext_are_refused(
        fleet: Fleet, tmp_path: Path) -> None:
    port = fleet.redis.port
    with pytest.raises(redis.exceptions.ConnectionError):  # NOAUTH, as the default user
        redis.Redis.from_url(fleet.redis.url("worker").replace(
            f"worker:{fleet.redis.passwords['worker']}@", "")).get("ocr")
    wrong = fleet.redis.url("api").replace(fleet.redis.passwords["api"],
                                           fleet.redis.passwords["worker"])
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(wrong).ping()
    with pytest.raises(redis.exceptions.ConnectionError):  # no TLS: no answer
        redis.Redis(port=port, username="worker", password=fleet.redis.passwords["worker"],
                    socket_timeout=5).ping()
    other_ca = make_certificates(tmp_path / "other", ca_name="someone-else").ca
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        redis.Redis.from_url(fleet.redis.url("worker", ca=other_ca)).ping()
    with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
        # a name the certificate does not carry: the host name is checked too
        redis.Redis.from_url(fleet.redis.url("worker", host="127.0.0.2")).ping()


@pytest.mark.parametrize("role", ["worker", "control", "beat", "flower", "api", "metrics"])
def test_every_role_refuses_a_placeholder_secret(fleet: Fleet, role: str,
                                                 tmp_path: Path) -> None:
    url = fleet.redis.url(role).replace(fleet.redis.passwords[role], "CHANGE-ME")
    process = ProcfileProcess(role, tmp_path / f"{role}.log", {"REDIS_URL": url,
                                                               "WORKER_NAME": "refused"})
    proc = process.spawn()
    assert proc.wait(120) == 2
    lines = process.log().strip().splitlines()
    assert len(lines) == 1 and "REDIS_URL" in lines[0] and "placeholder" in lines[0], lines


def test_the_redis_users_need_every_password(tmp_path: Path) -> None:
    """scripts/redis_acl.py stops on a missing, empty or placeholder password."""
    server = AclRedisServer(tmp_path)
    for change, variable in ((("REDIS_PASSWORD_KEDA", None), "REDIS_PASSWORD_KEDA"),
                             (("REDIS_PASSWORD_API", ""), "REDIS_PASSWORD_API"),
                             (("REDIS_PASSWORD_FLOWER", "change-me"), "REDIS_PASSWORD_FLOWER")):
        env = {"PATH": os.environ["PATH"], **server.env()}
        name, value = change
        if value is None:
            del env[name]
        else:
            env[name] = value
        done = subprocess.run([sys.executable, "-m", "scripts.redis_acl"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and variable in done.stderr, done.stderr


def test_a_restart_replays_the_roles_transactions(tmp_path: Path) -> None:
    """What the workers took stays taken across a restart (append-only file, ACL on).

    Every fetch is a Lua script, kept in the append-only file as MULTI/EXEC; Redis 7.0
    checks those against `default`'s permissions as it loads them at start.
    """
    server = AclRedisServer(tmp_path, appendonly=True).start()
    try:
        client = redis.Redis.from_url(server.url("client"))
        client.lpush("ocr", "a", "b", "c")
        worker = redis.Redis.from_url(server.url("worker"))
        taken = worker.eval("redis.call('HSET', KEYS[1], 't', 'x');"
                            " return redis.call('RPOP', KEYS[2])", 2, layout.list_held_key("ocr"),
                            "ocr")
        assert taken == b"a"
        server.restart()
        after = redis.Redis.from_url(server.url("worker"))
        assert after.llen("ocr") == 2 and after.hget(layout.list_held_key("ocr"), "t") == b"x"
        with pytest.raises(redis.exceptions.AuthenticationError):  # `default` still off
            redis.Redis.from_url(server.url("worker").replace(
                f"worker:{server.passwords['worker']}@", "default:x@")).ping()
    finally:
        server.stop()


def test_beats_scheduled_audit_reaches_a_worker_and_nothing_is_refused(fleet: Fleet) -> None:
    """Beat sends its audit at the top of a minute (`* * * * *`), the worker runs it.

    Last in the module: the wait for that minute overlaps the tests before it. What
    they had refused on purpose (DENIED, FLUSHALL) is left out of the ACL LOG's check.
    """
    beat, worker = fleet.processes["beat"], fleet.processes["worker"]
    beat.wait_until(lambda: "Sending due task ocr-audit-models" in beat.log(), 130,
                    "sending the scheduled audit")
    worker.wait_until(lambda: "Task ocr.audit_models[" in worker.log() and "succeeded"
                      in worker.log().split("Task ocr.audit_models[", 1)[1], 120,
                      "running beat's audit")
    roles = ("beat", "worker")
    on_purpose = {(role, what) for role in roles for what in (DENIED[role][1], "flushall")}
    refused = [e for e in fleet.redis.acl_log() if e["username"] in roles
               and (e["username"], e["object"]) not in on_purpose]
    assert refused == [], json.dumps(refused, indent=1)[:4000]
