"""A callback (webhook) receiver on loopback, for tests and benchmarks.

`CallbackReceiver` listens on a free loopback port and records each POST's headers
(as sent) and body, answering `answer` (204 unless a test wants a refusal); `bodies`
decodes the JSON summaries, `by_job` gives each job's delivered event ids in order.
A POST to a path under `/slow` answers after `slow` seconds; the first `failures`
POSTs to a path under `/flaky` are answered 500. `arrived` holds each POST's path and
when its request was read (`time.monotonic()`), in order.
Runs in the test's (or benchmark's) process, a thread per request; `stop` ends it.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from typing import Any


class CallbackReceiver:
    """A webhook receiver on loopback: records each POST's headers and body."""

    def __init__(self, answer: int = 204, slow: float = 0.0, failures: int = 0) -> None:
        self.posts: list[tuple[dict[str, str], bytes]] = []
        self.arrived: list[tuple[str, float]] = []
        received, arrived, failing = self.posts, self.arrived, [failures]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived.append((self.path, time.monotonic()))
                if self.path.startswith("/slow"):
                    time.sleep(slow)
                status = answer
                if self.path.startswith("/flaky") and failing[0] > 0:
                    failing[0] -= 1
                    status = 500
                else:
                    received.append((dict(self.headers.items()), body))
                try:
                    self.send_response(status)
                    self.end_headers()
                except OSError:  # a slow answer's sender gave up waiting
                    return

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self) -> list[dict[str, Any]]:
        """Each POSTed JSON body, in the order received."""
        return [json.loads(body or b"{}") for _, body in list(self.posts)]

    def by_job(self) -> dict[str, list[str]]:
        """Each job's delivered event ids, in order."""
        found: dict[str, list[str]] = {}
        for summary in self.bodies():
            found.setdefault(str(summary.get("id")), []).append(str(summary.get("event_id")))
        return found

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
