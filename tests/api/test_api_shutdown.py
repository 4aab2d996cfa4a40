"""The API process stops on SIGTERM while a client follows a job's events (rolling upgrades).

uvicorn waits for every open response before it exits; an events stream of a job that
does not end kept a stopped API alive until its SIGKILL. A real API process, a worker
with a gated fake engine (tests/gated_engine.py) that holds the job's page, and a
client reading the job's Server-Sent Events.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.api_server import ApiServer, create_token, session
from tests.harness import FAKE_PLUGINS, FAST_PAGES, Worker, eventually
from tests.image_fixtures import png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gate(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("gate")
    yield folder
    (folder / "open").touch()  # let the held page go, so the worker stops at once


def test_sigterm_ends_the_api_with_an_events_stream_open(
        start_worker: Callable[..., Worker], redis_url: str, gate: Path,
        tmp_path: Path) -> None:
    start_worker(OCR_ENGINE="gated", OCR_CONCURRENCY="1", OCR_CACHE_RESULTS="0",
                 OCR_ENGINE_PLUGINS=f"{FAKE_PLUGINS},gated=tests.gated_engine:GatedEngine",
                 FAKE_GATE_DIR=str(gate), **FAST_PAGES)
    api = ApiServer(tmp_path / "api.log", {"REDIS_URL": redis_url}).start()
    http = session(create_token(redis_url, "shutdown"))
    try:
        sent = http.post(f"{api.url}/v1/jobs", files={"file": ("a.png", png())}, timeout=30)
        assert sent.status_code == 202, sent.text
        job = sent.json()["id"]
        eventually(lambda: list(gate.glob("started-*")), 60, "the page held by the engine")
        seen: list[str] = []

        def follow() -> None:
            try:
                with http.get(f"{api.url}/v1/jobs/{job}/events", stream=True,
                              timeout=(5, 120)) as stream:
                    for line in stream.iter_lines():
                        seen.append(line.decode())
            except requests.RequestException:
                seen.append("(cut)")  # the stream closed mid-response, as it should
            except Exception as exc:  # noqa: BLE001 - asserted below, in the test's thread
                seen.append(f"(error {exc!r})")

        reader = threading.Thread(target=follow, daemon=True)
        reader.start()
        eventually(lambda: any(x.startswith("event: progress") for x in seen), 30,
                   "the stream's first event")
        assert api.proc is not None
        api.proc.send_signal(signal.SIGTERM)
        try:
            code = api.proc.wait(60)  # a bound for a loaded machine; ~10 s here
        except subprocess.TimeoutExpired:
            pytest.fail("the API did not exit on SIGTERM while an events stream was open")
        # uvicorn's own way out: requests given their time, the stream cancelled, then
        # the signal raised again into the process's own handler: a clean stop, exit 0
        # (not -15, a death by signal).
        assert code == 0, api.log()[-2000:]
        assert "timeout graceful shutdown exceeded" in api.log()
        reader.join(30)
        assert not reader.is_alive()  # the stream was closed: its client reconnects
        assert not any(x.startswith("(error") for x in seen), seen
        assert not any(x.startswith("event: end") for x in seen)  # the job goes on
    finally:
        api.stop()
        http.close()
