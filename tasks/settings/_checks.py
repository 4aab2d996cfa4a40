"""Checks of the settings' values, and the syntax of model names (OCR_MODEL).

Pure; runs wherever `Settings.from_env()` runs (every process).
"""

from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import fields
from typing import TYPE_CHECKING

from tasks.records.clients import CLIENT_NAME
from tasks.records.engines import AUTO, ENGINES, VLM_ENGINES
from tasks.records.request import AUTO_LANG, LANG_PATTERN

if TYPE_CHECKING:
    from tasks.settings import Settings

# OCR_ENGINE's values besides plugins: `auto` and the engine registry's names
# (tasks/records/engines.py, which also says which engines read with a VLM: never a
# VLM's fallback).
ENGINE_CHOICES = (AUTO, *ENGINES)
WORKER_ROLES = ("ocr", "control")
DEFAULT_PROMPT = (
    "Transcribe all text in this image exactly as written, in reading order. "
    "Use Markdown for headings, lists and tables. Output only the transcription."
)
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")
RABBITMQ_QUEUE_TYPES = ("classic", "quorum")
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*\Z")


class SettingsError(ValueError):
    """A setting in the environment has a value that cannot be used."""


def split_model(model: str) -> tuple[str, str | None]:
    """`org/name@rev` -> (`org/name`, `rev`); a folder name or bare repo id -> (it, None)."""
    name, sep, revision = model.partition("@")
    return (name, revision) if sep and "/" in name else (model, None)


def model_problem(model: str) -> str | None:
    """Why an OCR_MODEL value is invalid, or None."""
    name, revision = split_model(model)
    if "/" not in name:
        if model in (".", "..") or "\\" in model:
            return "a folder name must not be . or .. or hold a path separator"
        return None
    parts = name.split("/")
    if len(parts) != 2 or not all(_PART.match(p) and ".." not in p for p in parts):
        return "a hub repo id is org/name (letters, digits, . _ -)"
    if revision is not None and (not _REVISION.match(revision) or ".." in revision):
        return "a revision after @ is a branch, tag or commit hash"
    return None


def validate(settings: Settings) -> None:
    """Check values, also those that depend on each other; raise SettingsError."""
    if settings.engine not in ENGINE_CHOICES and settings.engine not in settings.engine_plugins:
        raise SettingsError(f"OCR_ENGINE={settings.engine!r}: choose one of auto, "
                            f"{', '.join(settings.all_engine_names())}")
    if settings.rapidocr_threads < 0:
        raise SettingsError("OCR_RAPIDOCR_THREADS must be 0 (cores / pool children) or more")
    for pair in settings.lang_engines:
        code, sep, engine = (p.strip() for p in pair.partition("="))
        if not sep or not code or engine not in settings.all_engine_names():
            raise SettingsError(f"OCR_LANG_ENGINES: {pair!r} is not lang=engine with an "
                                f"engine of {', '.join(settings.all_engine_names())}")
    if settings.worker_role not in WORKER_ROLES:
        raise SettingsError(f"OCR_WORKER_ROLE={settings.worker_role!r}: choose one of "
                            f"{', '.join(WORKER_ROLES)}")
    if settings.hard_time_limit <= settings.soft_time_limit:
        raise SettingsError("OCR_HARD_TIME_LIMIT must be larger than OCR_SOFT_TIME_LIMIT")
    if settings.page_hard_time_limit <= settings.page_soft_time_limit:
        raise SettingsError("OCR_PAGE_HARD_TIME_LIMIT must be larger than "
                            "OCR_PAGE_SOFT_TIME_LIMIT")
    for name in ("vlm_max_tokens", "vlm_longest_side", "mlx_memory_limit_mb"):
        value = getattr(settings, name)
        if value is not None and value <= 0:
            raise SettingsError(f"{env_name(settings, name)} must be positive (or empty)")
    if settings.mlx_cache_limit_mb is not None and settings.mlx_cache_limit_mb < 0:
        raise SettingsError("OCR_MLX_CACHE_LIMIT_MB must be 0 or more (or empty)")
    if not settings.vlm_temperatures or any(t < 0 for t in settings.vlm_temperatures):
        raise SettingsError("OCR_VLM_TEMPERATURES must list one or more temperatures "
                            ">= 0")
    if settings.vlm_fallback != "none" and (settings.vlm_fallback in VLM_ENGINES
                                        or settings.vlm_fallback not in
                                        settings.all_engine_names()):
        raise SettingsError(f"OCR_VLM_FALLBACK={settings.vlm_fallback!r}: choose none or "
                            "an engine that is not a VLM (tesseract, rapidocr)")
    if settings.escalate_engine and settings.escalate_engine not in VLM_ENGINES:
        raise SettingsError(f"OCR_ESCALATE_ENGINE={settings.escalate_engine!r}: choose "
                            f"{' or '.join(VLM_ENGINES)}, or leave it empty")
    if not 0 <= settings.escalate_below <= 1:
        raise SettingsError("OCR_ESCALATE_BELOW must be from 0 to 1")
    if settings.escalate_wait_seconds <= 0:
        raise SettingsError("OCR_ESCALATE_WAIT_SECONDS must be positive")
    unknown = set(settings.engines_from_zero) - set(settings.all_engine_names())
    if unknown:
        raise SettingsError(f"OCR_ENGINES_FROM_ZERO names no engine {sorted(unknown)}: "
                            f"choose among {', '.join(settings.all_engine_names())}")
    for name in ("vlm_api_timeout", "vlm_api_connect_timeout", "vlm_api_page_time_limit",
                 "vlm_api_retry_seconds", "vlm_api_probe_seconds", "vlm_api_in_flight"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"OCR_{name.upper()} must be positive")
    if not 0 < settings.vlm_server_port < 65536:
        raise SettingsError("OCR_VLM_SERVER_PORT must be a TCP port")
    if settings.vlm_api_url and not settings.vlm_api_url.startswith(("http://", "https://")):
        raise SettingsError("OCR_VLM_API_URL must be an http:// or https:// URL")
    for name in ("result_ttl", "blob_ttl", "max_image_pixels",
                 "max_pages", "soft_time_limit", "tesseract_threads", "tesseract_handles",
                 "pdf_dpi", "page_soft_time_limit", "max_deliveries", "max_render_pixels",
                 "dead_letter_max", "dead_letter_ttl", "visibility_timeout",
                 "worker_liveness_seconds",
                 "structure_chunk_pages", "jobs_listed", "callback_retry_seconds",
                 "callback_threads", "callback_threads_per_client"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{env_name(settings, name)} must be positive")
    if settings.worker_liveness_seconds < 10:  # heartbeats come every 5 s
        raise SettingsError("OCR_WORKER_LIVENESS_SECONDS must be at least 10: a live worker "
                            "would otherwise lose its jobs between two heartbeats")
    if not LANG_PATTERN.match(settings.tesseract_lang):
        raise SettingsError("OCR_TESSERACT_LANG must be tesseract codes joined by +, "
                            "e.g. eng or ell+eng")
    if settings.default_lang != AUTO_LANG and not LANG_PATTERN.match(settings.default_lang):
        raise SettingsError("OCR_LANG must be auto or tesseract codes joined by +, e.g. eng")
    for pair in settings.auto_langs:
        script, sep, lang = (p.strip() for p in pair.partition("="))
        if not sep or not script or not LANG_PATTERN.match(lang):
            raise SettingsError(f"OCR_AUTO_LANGS: {pair!r} is not Script=set, e.g. "
                                "Greek=ell+eng")
    if not all(LANG_PATTERN.match(code) for code in settings.wanted_langs):
        raise SettingsError("OCR_LANGS must be tesseract language codes, e.g. eng vie")
    for name in (settings.model, *settings.retired_models):
        problem = model_problem(name) if name else None
        if problem:
            env = "OCR_MODEL" if name == settings.model else "OCR_RETIRED_MODELS"
            raise SettingsError(f"{env}={name!r}: {problem}")
    for entry in settings.callback_allowed_hosts:
        if not re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^\s:/\[\]@]+)(:\d{1,5})?", entry):
            raise SettingsError(f"OCR_CALLBACK_ALLOWED_HOSTS: {entry!r} is not host "
                                "or host:port")
    for env, prefixes in (("OCR_ALLOWED_URLS", settings.allowed_urls),
                          ("OCR_READONLY_URLS", settings.readonly_urls),
                          ("OCR_SHARED_READ_URLS", settings.shared_read_urls)):
        for prefix in prefixes:
            if not re.fullmatch(r"(s3://[a-z0-9][a-z0-9.-]{1,62}|https?://[^\s/?#@]+)/\S*",
                                prefix) or not prefix.endswith("/"):
                raise SettingsError(f"{env}: {prefix!r} is not an s3://bucket/ or "
                                    "http(s)://host/ prefix ending in /")
    if settings.url_timeout <= 0 or settings.url_deadline <= 0:
        raise SettingsError("OCR_URL_TIMEOUT and OCR_URL_DEADLINE must be positive")
    if settings.batch_window < 1 or settings.batch_step_seconds <= 0 \
            or settings.batch_max_line_bytes < 1 or settings.batch_threads_per_client < 1:
        raise SettingsError("OCR_BATCH_WINDOW, OCR_BATCH_STEP_SECONDS, "
                            "OCR_BATCH_MAX_LINE_BYTES and OCR_BATCH_THREADS_PER_CLIENT "
                            "must be positive")
    if settings.max_decoded_mb <= 0:
        raise SettingsError("OCR_MAX_DECODED_MB must be positive")
    if settings.max_input_mb <= 0 or settings.max_output_mb <= 0:
        raise SettingsError("OCR_MAX_INPUT_MB and OCR_MAX_OUTPUT_MB must be positive")
    _check_redis(settings)
    _check_rabbitmq(settings)
    if settings.client and not CLIENT_NAME.match(settings.client):
        raise SettingsError(f"OCR_CLIENT={settings.client!r}: a client name is letters, "
                            "digits, . _ - (up to 64, starting with a letter or digit)")
    if settings.api_body_timeout <= 0 or settings.api_header_timeout <= 0:
        raise SettingsError("OCR_API_BODY_TIMEOUT and OCR_API_HEADER_TIMEOUT must be "
                            "positive")
    if settings.correction_versions < 1:
        raise SettingsError("OCR_CORRECTION_VERSIONS must be 1 or more")
    if min(settings.compare_timeout, settings.api_heavy_wait) <= 0 or min(
            settings.compare_max_lines, settings.compare_max_chars,
            settings.api_heavy_concurrency) < 1:
        raise SettingsError("OCR_COMPARE_MAX_LINES, OCR_COMPARE_MAX_CHARS, "
                            "OCR_COMPARE_TIMEOUT, OCR_API_HEAVY_CONCURRENCY and "
                            "OCR_API_HEAVY_WAIT must be positive")
    if settings.model_heartbeat_seconds <= 0:
        raise SettingsError("OCR_MODEL_HEARTBEAT_SECONDS must be positive")
    for name in ("prune_unused_days", "prune_grace_minutes", "idle_unload_seconds",
                 "api_jobs_in_flight", "api_requests_per_minute", "api_client_max_bytes"):
        if getattr(settings, name) < 0:
            raise SettingsError(f"{env_name(settings, name)} must be 0 or more")
    if "/" in settings.prune_prefix or os.sep in settings.prune_prefix:
        raise SettingsError("OCR_PRUNE_PREFIX must be the start of a name, not a path")
    if settings.audit_schedule is not None:
        try:
            audit_crontab_fields(settings.audit_schedule)
        except ValueError as exc:
            raise SettingsError(f"OCR_AUDIT_CRONTAB={settings.audit_crontab!r}: {exc}") \
                from None
    try:
        zoneinfo.ZoneInfo(settings.schedule_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(f"OCR_TIMEZONE={settings.timezone!r}: unknown time zone") from None


def _check_rabbitmq(settings: Settings) -> None:
    """OCR_RABBITMQ_QUEUE_TYPE, and a RabbitMQ BROKER_URL that lists several nodes."""
    if settings.rabbitmq_queue_type not in RABBITMQ_QUEUE_TYPES:
        raise SettingsError(f"OCR_RABBITMQ_QUEUE_TYPE={settings.rabbitmq_queue_type!r}: "
                            f"choose one of {', '.join(RABBITMQ_QUEUE_TYPES)}")
    if settings.rabbitmq_queue_type != "classic" and not settings.broker_is_amqp:
        raise SettingsError(f"OCR_RABBITMQ_QUEUE_TYPE={settings.rabbitmq_queue_type}: "
                            "needs RabbitMQ as broker (BROKER_URL=amqp://...)")
    if settings.broker_is_amqp:
        for part in settings.broker_url.split(";"):
            if part.strip().split("://", 1)[0] not in _AMQP_SCHEMES:
                raise SettingsError("BROKER_URL: every node of a RabbitMQ cluster is an "
                                    "amqp:// or amqps:// URL, separated by ;")


def _check_redis(settings: Settings) -> None:
    """REDIS_URL and a Redis BROKER_URL read as targets; the replica bounds."""
    urls = [("REDIS_URL", settings.redis_url)]
    if settings.broker_url and settings.broker_url.split("://", 1)[0] not in _AMQP_SCHEMES:
        urls.append(("BROKER_URL", settings.broker_url))
    for env, url in urls:
        try:
            settings.target_of(url)
        except ValueError as exc:
            other = " (or amqp:// for RabbitMQ)" if env == "BROKER_URL" else ""
            raise SettingsError(f"{env}: {exc}{other}") from None
    if settings.redis_min_replicas is not None and settings.redis_min_replicas < 0:
        raise SettingsError("OCR_REDIS_MIN_REPLICAS must be 0 or more (or empty)")
    if settings.redis_replica_timeout <= 0:
        raise SettingsError("OCR_REDIS_REPLICA_TIMEOUT must be positive")
    if settings.events_quiet_seconds < 0:
        raise SettingsError("OCR_EVENTS_QUIET_SECONDS must be 0 or more")


def check_worker(settings: Settings) -> None:
    """Checks of a worker's own settings against cluster-wide ones (worker start).

    A hard limit at or past the visibility timeout would let the broker hand a
    running job to a second worker (Redis) or close the channel under it (RabbitMQ).
    """
    limit = max(settings.hard_time_limit, settings.page_hard_time_limit)
    if settings.engine == "vlm-api" and \
            settings.vlm_api_page_time_limit + 30 >= settings.visibility_timeout:
        raise SettingsError(
            f"OCR_VLM_API_PAGE_TIME_LIMIT={settings.vlm_api_page_time_limit}: a vlm-api "
            f"page's limit (+30 s) must be shorter than the cluster-wide "
            f"OCR_VISIBILITY_TIMEOUT={settings.visibility_timeout} s, or the broker hands "
            f"the pages waiting on the inference server to another worker")
    if limit >= settings.visibility_timeout:
        raise SettingsError(
            f"OCR_HARD_TIME_LIMIT={settings.hard_time_limit} / OCR_PAGE_HARD_TIME_LIMIT="
            f"{settings.page_hard_time_limit}: the longest hard limit ({limit} s) must be "
            f"shorter than the cluster-wide OCR_VISIBILITY_TIMEOUT="
            f"{settings.visibility_timeout} s, or the broker hands this worker's running "
            f"jobs to another worker; lower the limit or raise OCR_VISIBILITY_TIMEOUT "
            f"on every host")


def audit_crontab_fields(expression: str) -> dict[str, set[int]]:
    """The minute/hour/... sets of a crontab expression; ValueError when it is invalid."""
    from celery.schedules import crontab

    parts = expression.split()
    if len(parts) != 5:
        raise ValueError("expected 5 fields: minute hour day-of-month month day-of-week")
    cron = crontab.from_string(expression)
    return {"minute": set(cron.minute), "hour": set(cron.hour)}


def env_name(settings: Settings, field_name: str) -> str:
    return next(f.metadata["setting"].env for f in fields(settings) if f.name == field_name)
