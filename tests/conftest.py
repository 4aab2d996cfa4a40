"""The tests' fixtures: a real redis-server, RabbitMQ vhosts, Procfile processes, clients.

Workers and APIs started from the Procfile, a callback receiver, Redis that fails
over: what they start is devkit/ (which tests and benchmarks import); only the fixtures
live here, and the hooks that keep a module in one pytest-xdist process
(`SHARED`) and print, at the end of a run, where its time went (per test module:
seconds, and the start-ups of the processes it started) and how many tests skipped for
want of the corpus (devkit/corpus.py: OCR_TEST_CORPUS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devkit.receivers import CallbackReceiver
from tasks.client import OcrClient
from tests.api_server import ApiServer
from tests.ha import RedisHA
from tests.harness import (
    CORPUS_MISSING,
    DATABASES,
    Broker,
    RabbitVhost,
    RedisServer,
    Worker,
    corpus_summary,
    kill_all,
    make_client,
    rabbitmq_missing,
    take_pending,
)
from tests.start_ups import (
    StartUp,
    cpu_line,
    cpu_sample,
    group_rank,
    process_lines,
    time_report,
)

# Modules that share something machine-wide run in the same test process, one after
# another (`make test` runs two, `--dist loadgroup`: pytest_xdist_make_scheduler): the
# checkout's own var/ and `make run`'s processes; podman's image store and the image
# the tests build; the RabbitMQ node, which a test restarts. Every other module is a
# group of its own, so its module-scoped workers start once.
SHARED = {
    "tests/deploy/test_procfile.py": "checkout",
    "tests/clients/test_docs_examples.py": "checkout",
    "tests/deploy/test_supervise.py": "checkout",
    "tests/deploy/test_containers.py": "podman",
    "tests/deploy/test_deploy_pods.py": "podman",
    "tests/queue/test_brokers.py": "rabbitmq",
}

_MODULE_SECONDS: dict[str, float] = {}
_START_UPS: list[StartUp] = []
_PROCESS_SECONDS: dict[str, float] = {}  # by test process (xdist worker), and its modules
_PROCESS_MODULES: dict[str, set[str]] = {}
_CPU_AT_START: list[tuple[int, int] | None] = []
_CORPUS_SKIPS: set[str] = set()  # the tests skipped for want of the corpus


def pytest_sessionstart(session: pytest.Session) -> None:
    _CPU_AT_START.append(cpu_sample())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Start the longest groups of tests first (LONGEST_FIRST).

    Every test process collects the same order (pytest-xdist checks it); the sort is
    stable, so a module's tests keep theirs.
    """
    def group(item: pytest.Item) -> str:
        module = item.nodeid.split("::")[0]
        return SHARED.get(module, module)

    items.sort(key=lambda item: group_rank(group(item)))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`: each module, or SHARED group of modules, whole in one process.

    pytest-xdist's own loadgroup reads `xdist_group` marks into the tests' node ids,
    which pytest 9 no longer reads them from: every test went to either process, and
    a module's fixtures (its workers, its compose stack) started in both. Here a
    test's group is its module's, from the node id.
    """
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::")[0]
            return SHARED.get(module, module)

    return ModuleGroups(config, log)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Carry the start-ups of this phase on its report (to the process that prints)."""
    report = yield
    report.user_properties.append(("start_ups", take_pending()))
    return report


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Add a test's setup, call and teardown seconds and start-ups to its module's."""
    module = report.nodeid.split("::")[0]
    _MODULE_SECONDS[module] = _MODULE_SECONDS.get(module, 0.0) + report.duration
    node = getattr(report, "node", None)  # the xdist worker that ran it (on the controller)
    process = node.gateway.id if node is not None else "this process"
    _PROCESS_SECONDS[process] = _PROCESS_SECONDS.get(process, 0.0) + report.duration
    _PROCESS_MODULES.setdefault(process, set()).add(module)
    for name, value in report.user_properties:
        if name == "start_ups":
            _START_UPS.extend(StartUp(module, process, seconds) for process, seconds in value)
    if report.skipped and CORPUS_MISSING in str(report.longrepr):
        _CORPUS_SKIPS.add(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _MODULE_SECONDS:
        terminalreporter.section("time per test module")
        for line in time_report(_MODULE_SECONDS, _START_UPS):
            terminalreporter.write_line(line)
        terminalreporter.write_line("(seconds add up the test processes; pytest's last "
                                    "line gives the wall clock)")
        for line in process_lines(_PROCESS_SECONDS, _PROCESS_MODULES):
            terminalreporter.write_line(line)
        cpu = cpu_line(_CPU_AT_START[0] if _CPU_AT_START else None, cpu_sample())
        if cpu is not None:
            terminalreporter.write_line(cpu)
    if _CORPUS_SKIPS:
        terminalreporter.section("the corpus")
        for line in corpus_summary(len(_CORPUS_SKIPS)):
            terminalreporter.write_line(line)


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own that keeps an append-only file, like the project's."""
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["redis", "amqp"])
def broker(request: pytest.FixtureRequest, aof_redis: RedisServer) -> Iterator[Broker]:
    """Each broker in turn; Redis (`aof_redis`) is result backend and blob store of both.

    RabbitMQ tests skip, with the reason, where no RabbitMQ runs.
    """
    if request.param == "redis":
        yield Broker("redis", aof_redis)
        return
    reason = rabbitmq_missing()
    if reason is not None:
        pytest.skip(reason)
    vhost = RabbitVhost()
    vhost.create(consumer_timeout_ms=3_600_000)
    try:
        yield Broker("amqp", aof_redis, vhost)
    finally:
        vhost.delete(wait=False)  # its workers are gone; the next test need not wait


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


_next_db = iter(range(1, DATABASES))


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> str:
    """A Redis database of this test module's own, so its workers see only its jobs."""
    return redis_server.url(next(_next_db))


@pytest.fixture
def lone_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own (database 1): its keys and counts are its alone."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server.url(1)
    finally:
        server.stop()


@pytest.fixture
def own_redis_url(redis_server: RedisServer) -> str:
    """A Redis database of this test's own.

    For a worker that must not share the module's queues with the module's workers.
    """
    return redis_server.url(next(_next_db))


@pytest.fixture(scope="module")
def start_worker(tmp_path_factory: pytest.TempPathFactory,
                 redis_url: str) -> Iterator[Callable[..., Worker]]:
    started: list[Worker] = []

    def factory(process: str = "worker", **env: str) -> Worker:
        log = tmp_path_factory.mktemp("worker") / "worker.log"
        worker = Worker(log, {"REDIS_URL": redis_url, **env}, process)
        started.append(worker)
        return worker.start()

    yield factory
    kill_all(started)  # the module's tests are done: nothing waits on a warm shutdown


@pytest.fixture(scope="module")
def start_api(tmp_path_factory: pytest.TempPathFactory,
              redis_url: str) -> Iterator[Callable[..., ApiServer]]:
    """The Procfile's `api` on the module's Redis database, with the settings given."""
    started: list[ApiServer] = []

    def factory(**env: str) -> ApiServer:
        server = ApiServer(tmp_path_factory.mktemp("api") / "api.log",
                           {"REDIS_URL": redis_url, **env})
        started.append(server)
        return server.start()

    yield factory
    kill_all(started)  # the module's tests are done: nothing waits on a graceful stop


@pytest.fixture(scope="module")
def client(redis_url: str) -> Iterator[OcrClient]:
    ocr = make_client(redis_url)
    yield ocr
    ocr.close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    """A callback receiver on loopback of this module's own (devkit/receivers.py)."""
    hooks = CallbackReceiver()
    yield hooks
    hooks.stop()


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    """Redis that fails over, of this module's own: a primary, two replicas, three Sentinels."""
    redis_set = RedisHA(tmp_path_factory.mktemp("ha")).start()
    yield redis_set
    redis_set.stop()
