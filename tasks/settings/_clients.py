"""Settings of what clients may ask: callbacks, HTTP API quotas, path and URL inputs.

Part of `tasks.settings.Settings` (read and validated there); runs in every process.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ._field import setting as _s


@dataclass(frozen=True)
class ClientSettings:
    """Callbacks, the HTTP API's quotas and cache sharing, and where inputs may be read from."""

    client: str = _s("OCR_CLIENT", "",
                     "The client name this process's jobs are sent under (submit.py "
                     "`--client`, `OcrClient`): their lane in the fair shares between "
                     "clients, and their `client` in results and metrics. Empty: the host "
                     "user's login name. The HTTP API sends each job under its token's "
                     "name instead.")
    jobs_listed: int = _s("OCR_JOBS_LISTED", "10000",
                          "The most jobs each client's list keeps (`GET /v1/jobs`, "
                          "`submit.py jobs`), newest first; the list of every client's "
                          "jobs keeps ten times as many. A job also leaves the lists when "
                          "its records expire (OCR_BLOB_TTL + OCR_RESULT_TTL after it was "
                          "sent).")
    callback_allowed_hosts: tuple[str, ...] = _s(
        "OCR_CALLBACK_ALLOWED_HOSTS", "",
        "Hosts `callback_url` may name (comma separated `host` or `host:port`); empty: "
        "any public host. Private, loopback and link-local addresses (IP literals, and "
        "every address a name resolves to when the callback is sent) are refused as "
        "`callback_not_allowed` unless their host is listed here.")
    callback_secret: str = _s(
        "OCR_CALLBACK_SECRET", "",
        "Key of the callbacks' HMAC-SHA256 signature (`X-OCR-Signature`, "
        "`X-OCR-Timestamp`; docs/tasks.md); empty: callbacks are not signed.", secret=True)
    callback_url_prefixes: tuple[str, ...] = _s(
        "OCR_CALLBACK_URL_PREFIXES", "",
        "Deprecated, use OCR_CALLBACK_ALLOWED_HOSTS. URL prefixes (comma separated) "
        "that the normalised `callback_url` must also start with; empty: no prefix rule.")
    callback_timeout: float = _s("OCR_CALLBACK_TIMEOUT", "10",
                                 "Seconds one HTTP callback attempt may take; failures are "
                                 "retried with backoff (the tasks' retry policy, "
                                 "docs/tasks.md).")
    callback_retry_seconds: float = _s("OCR_CALLBACK_RETRY_SECONDS", "3600",
                                       "Seconds a callback keeps being retried while its "
                                       "receiver fails (5xx, no answer), with the tasks' "
                                       "backoff (steps up to 60 s), before its delivery is "
                                       "recorded as `callback_failed`.")
    callback_threads: int = _s("OCR_CALLBACK_THREADS", "8",
                               "Threads of the control worker that send callbacks (the "
                               "callback outbox: POSTs and callback tasks), beside its pool.")
    callback_threads_per_client: int = _s(
        "OCR_CALLBACK_THREADS_PER_CLIENT", "2",
        "Most of those threads one client's callbacks hold at once: a slow receiver "
        "delays its own client's other callbacks only.")
    api_jobs_in_flight: int = _s("OCR_API_JOBS_IN_FLIGHT", "100",
                                 "HTTP API: most unfinished jobs one client may have; more "
                                 "are answered 429 `quota_exceeded` (0: no limit; `submit.py "
                                 "tokens create|set --jobs-in-flight` sets one client's own).")
    api_client_max_bytes: int = _s("OCR_API_CLIENT_MAX_BYTES", "268435456",
                                   "HTTP API: most bytes one client may have stored in "
                                   "Redis: uploads being received, inputs of unfinished "
                                   "jobs, its line corrections and its jobs' stored results "
                                   "(default 256 MB). An upload or a correction that would "
                                   "pass it, or a job sent while past it, is answered 429 "
                                   "`quota_exceeded` and nothing of it is kept (0: no "
                                   "limit; per client: --max-bytes).")
    correction_versions: int = _s("OCR_CORRECTION_VERSIONS", "5",
                                  "HTTP API: versions of a corrected line kept (its text, "
                                  "who, when), newest last; a new one drops the oldest. "
                                  "Corrections have no TTL: this bound, a line's 10,000 "
                                  "characters and the client's bytes quota "
                                  "(OCR_API_CLIENT_MAX_BYTES) hold them.")
    api_body_timeout: float = _s("OCR_API_BODY_TIMEOUT", "120",
                                 "HTTP API: seconds a request's body may take to arrive; "
                                 "an upload still arriving then is answered 408 "
                                 "`body_timeout` and what came of it is deleted.")
    api_header_timeout: float = _s("OCR_API_HEADER_TIMEOUT", "10",
                                   "HTTP API: seconds a request's line and headers may "
                                   "take to arrive, from the connection's start or the "
                                   "previous answer's end; a connection whose request "
                                   "head is not in by then is closed.")
    cache_across_clients: bool = _s("OCR_CACHE_ACROSS_CLIENTS", "0",
                                    "Let jobs of different HTTP API clients share cached "
                                    "results (off: each client's jobs only reuse its own, "
                                    "so a `cached` answer never tells one client what "
                                    "another sent).")
    api_requests_per_minute: int = _s("OCR_API_REQUESTS_PER_MINUTE", "0",
                                      "HTTP API: most requests one client may make a "
                                      "minute; more are answered 429 with Retry-After (0: "
                                      "no limit; per client: --requests-per-minute).")
    # The console's compare of two readings of a page (docs/console.md).
    compare_max_lines: int = _s("OCR_COMPARE_MAX_LINES", "2000",
                                "Console: most lines each reading of a page may have to be "
                                "compared; more are answered 422 `compare_too_large` and "
                                "nothing is compared.")
    compare_max_chars: int = _s("OCR_COMPARE_MAX_CHARS", "200000",
                                "Console: most characters each reading of a page may have "
                                "to be compared; more are answered 422 "
                                "`compare_too_large`.")
    compare_timeout: float = _s("OCR_COMPARE_TIMEOUT", "10",
                                "Console: seconds a compare may run; one still comparing "
                                "then is answered 422 `compare_too_large`.")
    api_heavy_concurrency: int = _s(
        "OCR_API_HEAVY_CONCURRENCY", "2",
        "HTTP API: requests one API process works on at once whose work grows with a "
        "stored object (the console's compare; a corrected hOCR, ALTO or PDF result; "
        "any result or page read of a job whose stored result is over 1 MB), "
        "each in a worker thread; one client holds at most half of them (rounded up). "
        "The others wait for a turn without holding a thread, so the API's other routes "
        "keep theirs.")
    api_heavy_wait: float = _s("OCR_API_HEAVY_WAIT", "30",
                               "HTTP API: seconds such a request waits for a turn; then "
                               "it is answered 503 `busy` with Retry-After.")
    allowed_roots: tuple[Path, ...] = _s(
        "OCR_ALLOWED_ROOTS", "",
        "Directories (os.pathsep separated) under which `path` inputs may be read; "
        "empty: `path` inputs are refused.")
    # Documents by URL (docs/object-storage.md).
    allowed_urls: tuple[str, ...] = _s(
        "OCR_ALLOWED_URLS", "",
        "URL prefixes (comma separated, each ending in `/`: `s3://invoices/`, "
        "`https://files.example.com/scans/`): the service's outer bound, outside which "
        "no `url` input is read and no `result_url` written. It grants an HTTP API "
        "client nothing: that client reads under its own `--allowed-url` prefixes and "
        "OCR_SHARED_READ_URLS only. Empty: URL inputs and result_url are refused "
        "(`url_not_allowed`), nothing is fetched. https never reaches a private, "
        "loopback or link-local address unless a prefix names that address itself.")
    shared_read_urls: tuple[str, ...] = _s(
        "OCR_SHARED_READ_URLS", "",
        "URL prefixes (comma separated, each ending in `/`, as OCR_ALLOWED_URLS) that "
        "every HTTP API client may read `url` inputs and batch sources under, beside its "
        "own `--allowed-url` prefixes; never a result target by this alone. Only what "
        "also lies under OCR_ALLOWED_URLS is read. Empty: a client without prefixes of "
        "its own reads no URL.")
    readonly_urls: tuple[str, ...] = _s(
        "OCR_READONLY_URLS", "",
        "URL prefixes (comma separated, each ending in `/`, as OCR_ALLOWED_URLS) that "
        "are never a result target, for any client: no `result_url` lies under one, and "
        "no batch's target holds one or lies under one (`url_not_allowed`). Reading "
        "under them is unchanged. OCR_GOLDEN_SET, when it names a URL, is read-only too.")
    url_timeout: float = _s("OCR_URL_TIMEOUT", "30",
                            "Seconds to connect to the object store or https server, and "
                            "the longest wait for the next bytes of a read; a store that "
                            "does not answer is `transient` (the job is retried).")
    url_deadline: float = _s("OCR_URL_DEADLINE", "60",
                             "Seconds one read of a URL may take in all: its headers, "
                             "body and redirects together (a job's input, a batch's "
                             "source, a manifest document's HEAD, a listing). A read "
                             "still going then is cut and ends `url_timeout` (not "
                             "retried); OCR_URL_TIMEOUT bounds each wait within it.")
    url_spool_dir: Path = _s("OCR_URL_SPOOL_DIR", "",
                             "Local folder for the one copy per host of a PDF named by URL "
                             "whose pages fan out (page tasks read it instead of Redis); "
                             "empty: `ocr-url-spool` in the system's temporary folder.")
    batch_window: int = _s("OCR_BATCH_WINDOW", "64",
                           "Batches: most documents of one batch in flight at once (sent "
                           "as jobs, not ended). Redis holds the state of these only, not "
                           "of the whole collection; a crash re-reads at most these.")
    batch_max_line_bytes: int = _s("OCR_BATCH_MAX_LINE_BYTES", "65536",
                                   "Batches: the longest manifest line read; a longer "
                                   "one is that document's manifest line, failed "
                                   "`line_too_long`, and the batch goes on.")
    batch_step_seconds: float = _s("OCR_BATCH_STEP_SECONDS", "0.5",
                                   "Batches: seconds between two steps of a batch's "
                                   "driver (`ocr.batch_step`: collect the documents "
                                   "that ended, send the next ones).")
    batch_threads_per_client: int = _s(
        "OCR_BATCH_THREADS_PER_CLIENT", "1",
        "Batches: most threads of the control worker's pool that one client's batch "
        "steps hold at once (a step reads the batch's source and HEADs its documents); "
        "its other batches' steps wait their turn. Batch steps of all clients together "
        "leave one thread of the pool to cancels and callbacks.")

    @property
    def spool_dir(self) -> Path:
        """OCR_URL_SPOOL_DIR, or `ocr-url-spool` in the system's temporary folder."""
        if str(self.url_spool_dir) not in ("", "."):
            return self.url_spool_dir
        return Path(tempfile.gettempdir()) / "ocr-url-spool"
