"""Inference servers for tests, benchmarks and a newcomer's laptop.

`VlmServer`: the Procfile's `vlm-server` process (mlx_vlm.server). `SimulatedInferenceServer`:
a simulator of an OpenAI-compatible server (fixed answer latency, any number at once),
in the test's own process, or on its own:

    python -m devkit.inference_server --port 8001 [--text TEXT | --echo] [--latency S]

answers the OpenAI chat API (`POST /v1/chat/completions`, streamed or not, and
`GET /v1/models`) with a fixed text, or with the text of each request's prompt
(`--echo`). A vlm-api worker with `OCR_VLM_API_URL=http://127.0.0.1:8001/v1` reads
pages with it, so escalation runs end to end with no model (docs/escalation.md).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from devkit.harness import ProcfileProcess, free_port

SERVER_ENV = {"MLX_DISABLE_COMPILE": "1", "HF_HUB_OFFLINE": "1"}


class VlmServer(ProcfileProcess):
    """`python scripts/run_vlm_server.py` from the Procfile, on a free loopback port.

    `env` are its settings (OCR_ENGINE=vlm-api, OCR_MODEL_DIR, OCR_MODEL, ...);
    OCR_VLM_SERVER_PORT is chosen here unless given.
    """

    stop_grace = 20.0

    def __init__(self, log_path: Path, env: dict[str, str]) -> None:
        self.port = int(env.get("OCR_VLM_SERVER_PORT") or free_port())
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__("vlm-server", log_path, {
            **SERVER_ENV, **env, "OCR_VLM_SERVER_PORT": str(self.port)})

    def start(self, timeout: float = 300) -> VlmServer:
        """Start it and wait until /health names a loaded model."""
        self.spawn()
        self.wait_until(lambda: (self.health() or {}).get("loaded_model"), timeout, "up")
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            answer = requests.get(f"{self.url}/health", timeout=2)
        except requests.RequestException:
            return None
        return dict(answer.json()) if answer.status_code == 200 else None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


class SimulatedInferenceServer:
    """A simulator of an OpenAI-compatible inference server (no model behind it).

    For tests and the fleet benchmark (bench/vlm_fleet.py). Every chat request is
    answered `latency` seconds after it arrives, whatever the load (what a GPU server
    does well below its batch limit), with a streamed fixed text; any number of
    requests at once (a thread per connection). What it was asked is kept:
    `requests` (the JSON bodies), `traceparents` (each one's `traceparent` header, as a
    vLLM server continues it), `in_flight` and `most_in_flight`. Behaviours, set on
    the object: `hold_until` (answer nothing until that many requests wait at once, or
    `hold_timeout` passed), `abort_first` (that many answers end with vLLM's `abort`
    finish), `chars_per_delta` (merged deltas: several tokens' text in one delta; the
    server's `usage` counts `tokens` either way), `silent` (accept, never answer),
    `answer` (the text of each answer from its request's JSON body, in place of
    `text`: an oracle that answers each page with its ground truth, bench/escalation.py).
    `start()` binds its port (given, or a free one): a port nobody listens on yet is
    a server that is down.
    """

    def __init__(self, port: int | None = None, latency: float = 0.0,
                 text: str = "Page read by the simulated server.",
                 model: str = "simulated-vlm") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.latency = latency
        self.text = text
        self.model = model
        self.hold_until = 0
        self.hold_timeout = 300.0
        self.abort_first = 0
        self.chars_per_delta = 0
        self.silent = False
        self.answer: Callable[[dict[str, Any]], str] | None = None
        self.requests: list[dict[str, Any]] = []
        self.traceparents: list[str | None] = []  # each request's W3C header, as received
        self.in_flight = 0
        self.most_in_flight = 0
        self.aborted = 0
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.answers: list[float] = []  # ... and of each answer's end
        self._lock = threading.Condition()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> SimulatedInferenceServer:
        simulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path.rstrip("/") in ("/v1/models", "/health"):
                    simulator._json(self, 200, {"object": "list", "data": [
                        {"id": simulator.model, "object": "model"}]})
                else:
                    simulator._json(self, 404, {"error": {"type": "not_found"}})

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/") != "/v1/chat/completions":
                    simulator._json(self, 404, {"error": {"type": "not_found"}})
                    return
                simulator._answer(self, body, self.headers.get("traceparent"))

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="simulated-server",
                         daemon=True).start()
        return self

    def release(self) -> None:
        """Answer what is held (`hold_until`) and hold nothing from now on."""
        with self._lock:
            self.hold_until = 0
            self._lock.notify_all()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _json(self, handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, handler: BaseHTTPRequestHandler, body: dict[str, Any],
                traceparent: str | None = None) -> None:
        arrived = time.monotonic()
        with self._lock:
            self.requests.append(body)
            self.traceparents.append(traceparent)
            self.arrivals.append(arrived)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._lock.notify_all()
            abort = self.aborted < self.abort_first
            self.aborted += abort
        try:
            self._wait(arrived)
            if self.silent:
                self._stop.wait()
                return
            text = self.text if self.answer is None else self.answer(body)
            if body.get("stream"):
                self._stream(handler, abort, text)
            else:
                self._whole(handler, text)
            with self._lock:
                self.answers.append(time.monotonic())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up on the answer (its own time limit)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _wait(self, arrived: float) -> None:
        """Hold the answer: until `hold_until` wait at once, then `latency` after arrival."""
        with self._lock:
            until = arrived + self.hold_timeout
            while self.hold_until and self.most_in_flight < self.hold_until \
                    and not self._stop.is_set() and time.monotonic() < until:
                self._lock.wait(until - time.monotonic())
        left = arrived + self.latency - time.monotonic()
        if left > 0:
            self._stop.wait(left)

    def _whole(self, handler: BaseHTTPRequestHandler, text: str) -> None:
        """A request without `stream`: the answer in one chat.completion."""
        words = len(text.split())
        self._json(handler, 200, {
            "id": "sim", "object": "chat.completion", "model": self.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 100, "completion_tokens": words,
                      "total_tokens": 100 + words}})
        handler.close_connection = True

    def _stream(self, handler: BaseHTTPRequestHandler, abort: bool, text: str) -> None:
        words = text.split(" ")
        tokens = [w if i == 0 else " " + w for i, w in enumerate(words)]
        if self.chars_per_delta:
            text = "".join(tokens)
            deltas = [text[i:i + self.chars_per_delta]
                      for i in range(0, len(text), self.chars_per_delta)]
        else:
            deltas = tokens
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Connection", "close")
        handler.end_headers()

        def event(data: Any) -> None:
            payload = data if isinstance(data, str) else json.dumps(data)
            handler.wfile.write(f"data: {payload}\n\n".encode())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {"id": "sim", "object": "chat.completion.chunk", "model": self.model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

        event(chunk({"role": "assistant", "content": ""}, None))
        for delta in deltas[:1] if abort else deltas:
            event(chunk({"content": delta}, None))
        event(chunk({}, "abort" if abort else "stop"))
        event({"id": "sim", "object": "chat.completion.chunk", "model": self.model,
               "choices": [], "usage": {"prompt_tokens": 100, "completion_tokens":
                                        len(tokens), "total_tokens": 100 + len(tokens)}})
        event("[DONE]")
        handler.wfile.flush()
        handler.close_connection = True


def prompt_text(body: dict[str, Any]) -> str:
    """The text of a chat request's messages (their text parts; images left out)."""
    texts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        parts = [content] if isinstance(content, str) else [
            part.get("text", "") for part in content or [] if isinstance(part, dict)
            and part.get("type") == "text"]
        texts += [part for part in parts if part]
    return " ".join(" ".join(texts).split())


def main(argv: list[str] | None = None) -> int:
    """Serve the simulated inference server until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m devkit.inference_server",
        description="A simulated OpenAI-compatible inference server: no model, a fixed "
                    "or echoed answer.")
    parser.add_argument("--port", type=int, default=8001)
    answer = parser.add_mutually_exclusive_group()
    answer.add_argument("--text", default="Page read by the simulated server.",
                        help="the answer to every request")
    answer.add_argument("--echo", action="store_true",
                        help="answer each request with the text of its prompt")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds each answer takes (default 0)")
    parser.add_argument("--model", default="simulated-vlm",
                        help="the model name it serves (OCR_VLM_API_MODEL)")
    args = parser.parse_args(argv)
    server = SimulatedInferenceServer(port=args.port, latency=args.latency, text=args.text,
                                      model=args.model)
    if args.echo:
        server.answer = prompt_text
    try:
        server.start()
    except OSError as exc:
        print(f"inference server: port {args.port}: {exc.strerror}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    print(f"inference server: serving {server.url} (model {args.model}; "
          f"{'echo' if args.echo else repr(args.text)})", flush=True)
    stop.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
