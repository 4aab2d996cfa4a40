"""The service's HTTP API (docs/http-api.md) from OCRmyPDF: standard library only.

Runs in OCRmyPDF's processes: `check` in its main process, `read` in its page workers
(one page a call; OCRmyPDF's `--jobs` decides how many at once). A page is one
multipart upload (`POST /v1/jobs`), one wait on the job's Server-Sent Events until
`event: end`, and one or two reads of its result.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from ocrmypdf_ocr_queue.errors import PageFailed, QueueError, Refused, Unreachable
from ocrmypdf_ocr_queue.pages import PageJob, PageRead

# The API sends a keepalive comment every 15 s while a job runs: a silence this long
# means the connection is gone.
READ_TIMEOUT = 60.0
FINAL = ("SUCCESS", "PARTIAL", "FAILURE", "CANCELLED")


class HttpApi:
    """The HTTP API at `url` (http or https) with a client's `token`."""

    def __init__(self, url: str, token: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise Refused(f"--ocr-queue-url {url!r} is not an http(s) URL")
        if not token:
            raise Refused("the HTTP API needs a client's token: --ocr-queue-token or "
                          "OCR_QUEUE_TOKEN (`ocr_admin.py tokens create NAME`)")
        self.url = url.rstrip("/")
        self._parts = parts
        self._base = parts.path.rstrip("/")
        self._token = token

    def check(self, engine: str | None) -> None:
        """Raise unless the API answers, takes the token and a worker reads the queue."""
        queue = f"ocr-{engine}" if engine else "ocr"
        status, body = self._call("GET", f"/readyz?queue={quote(queue)}", timeout=10)
        ready = _json(body)
        if status not in (200, 503) or not isinstance(ready, dict):
            raise Unreachable(f"{self.url} answered /readyz with HTTP {status}: is it the "
                              "OCR service's API?")
        if ready.get("queues") is None:  # only a client's token gets the details
            raise Refused(f"the OCR service at {self.url} refused the token")
        if not ready.get("ready"):
            why = ready.get("message") or f"no live worker consumes queue {queue!r}"
            raise Unreachable(f"the OCR service at {self.url} is not ready: {why}")

    def read(self, image: Path, job: PageJob) -> PageRead:
        """Send the page image as one job, wait for its end, return what it read."""
        job_id = self._submit(image, job)
        self._wait(job_id, job.deadline)
        status, body = self._call("GET", f"/v1/jobs/{job_id}/result?format=json")
        result = _json(body)
        if status != 200 or not isinstance(result, dict):
            raise PageFailed(_error_line(status, result, "the result"))
        if result.get("status") != "SUCCESS":
            raise PageFailed(_error_line(status, result, "the job"))
        pages = result.get("pages") or [{}]
        hocr = None
        if job.output == "hocr":
            status, hocr = self._call("GET", f"/v1/jobs/{job_id}/result?format=hocr")
            if status != 200:
                raise PageFailed(_error_line(status, _json(hocr), "the hOCR"))
        return PageRead(text=str(result.get("text", "")), hocr=hocr,
                        rotation=int(pages[0].get("rotation") or 0))

    def close(self) -> None:
        """Nothing held between calls (a connection per request)."""

    def _submit(self, image: Path, job: PageJob) -> str:
        fields = {"output": job.output, "lang": job.lang,
                  "deadline": f"{time.time() + job.deadline:.3f}"}
        if job.engine:
            fields["engine"] = job.engine
        boundary = uuid.uuid4().hex
        parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                 f"{value}\r\n".encode() for name, value in fields.items()]
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{image.name}"\r\nContent-Type: application/octet-stream'
                     "\r\n\r\n".encode() + image.read_bytes() + b"\r\n")
        parts.append(f"--{boundary}--\r\n".encode())
        status, body = self._call(
            "POST", "/v1/jobs", b"".join(parts),
            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        sent = _json(body)
        if status != 202 or not isinstance(sent, dict) or "id" not in sent:
            raise PageFailed(_error_line(status, sent, "the upload"))
        return str(sent["id"])

    def _wait(self, job_id: str, deadline: float) -> None:
        """Read the job's events until `event: end` (the job's own deadline ends it)."""
        connection = self._connection(READ_TIMEOUT)
        give_up = time.monotonic() + deadline + READ_TIMEOUT
        try:
            connection.request("GET", f"{self._base}/v1/jobs/{job_id}/events",
                               headers=self._headers())
            answer = connection.getresponse()
            if answer.status != 200:
                raise PageFailed(_error_line(answer.status, _json(answer.read()),
                                             "the job's events"))
            event = ""
            while time.monotonic() < give_up:
                line = answer.readline()
                if not line:
                    raise Unreachable(f"the OCR service at {self.url} closed the job's "
                                      "events before its end")
                text = line.decode("utf-8").rstrip("\r\n")
                if text.startswith("event:"):
                    event = text[6:].strip()
                elif text.startswith("data:") and event == "end":
                    return
            raise PageFailed(f"job {job_id} had not ended {deadline:.0f} s after its "
                             "deadline")
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self._unreachable(exc)) from None
        finally:
            connection.close()

    def _call(self, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = READ_TIMEOUT
              ) -> tuple[int, bytes]:
        connection = self._connection(timeout)
        try:
            connection.request(method, f"{self._base}{path}", body=body,
                               headers={**self._headers(), **(headers or {})})
            answer = connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(self._unreachable(exc)) from None
        finally:
            connection.close()
        if answer.status == 401:
            raise Refused(f"the OCR service at {self.url} refused the token")
        return answer.status, data

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        kind = (http.client.HTTPSConnection if self._parts.scheme == "https"
                else http.client.HTTPConnection)
        return kind(self._parts.hostname or "", self._parts.port, timeout=timeout)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _unreachable(self, exc: BaseException) -> str:
        reason = "timed out" if isinstance(exc, socket.timeout) else \
            (str(exc).strip() or type(exc).__name__)
        return f"cannot reach the OCR service at {self.url} ({reason})"


def _json(body: bytes | None) -> Any:
    try:
        return json.loads(body or b"")
    except ValueError:
        return None


def _error_line(status: int, body: Any, what: str) -> str:
    """One line: the service's error code and message, or the HTTP status."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("code"):
        return f"{error['code']}: {error.get('message', '')}".rstrip(": ")
    return f"{what} failed (HTTP {status})"


__all__ = ["HttpApi", "QueueError"]
