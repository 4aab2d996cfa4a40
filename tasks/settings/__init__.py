"""All settings of the OCR service, typed and validated in one place, and their docs.

Every setting is read from the environment by `Settings.from_env()`; nothing is read
at import time, and nothing here imports Celery at import time or any other floor of
the service but its errors and records (the ground floor). Each field names its
environment variable, default and meaning; `docs/settings.md` is generated from the
same table (`python worker_config.py > docs/settings.md`). The Celery configuration
derived from the settings lives beside the app (tasks/queue/celery_config.py).

The fields are declared by concern, each group in its own module: `_broker` (Redis and
the broker), `_engine` (the engine choice, the VLM engines), `_languages` (tesseract,
rapidocr, languages, plugins), `_worker` (pool, job limits, storage, input bounds),
`_pages` (reading pages), `_clients` (callbacks, HTTP API quotas, inputs) and `_models`
(the model directory's lifecycle). `Settings` joins them; `_checks.validate` is the one
place their values are checked, `_values.parse` the one place strings become values,
`_secrets.secret_problem` the one place a placeholder or empty secret is refused.

Runs in every process: clients (submit.py), the HTTP API, the worker parent and its
pool children, beat and Flower.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ._broker import BrokerSettings
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
from ._clients import ClientSettings
from ._engine import EngineSettings
from ._field import Setting, settings_markdown_of
from ._languages import LanguageSettings
from ._models import ModelDirSettings
from ._pages import PageSettings
from ._secrets import secret_problem
from ._values import parse
from ._worker import WorkerSettings

__all__ = ["DEFAULT_PROMPT", "ENGINE_CHOICES", "VLM_ENGINES", "WORKER_ROLES", "Setting", "Settings",
           "SettingsError", "audit_crontab_fields", "model_problem",
           "settings_markdown", "split_model"]


# A dataclass lists its bases' fields from the last base to the first: the groups'
# order below, read backwards (broker first), is the order of docs/settings.md.
@dataclass(frozen=True)
class Settings(ModelDirSettings, ClientSettings, PageSettings, WorkerSettings,
               LanguageSettings, EngineSettings, BrokerSettings):
    """The service's settings. Build with `Settings.from_env()`; pass the object on."""

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
        problem = secret_problem(env)  # a placeholder or empty secret stops every role
        if problem:
            raise SettingsError(problem)
        return settings

    def validate(self) -> None:
        """Check values, also those that depend on each other; raise SettingsError."""
        validate(self)

    def check_worker(self) -> None:
        """Checks of a worker's own settings against cluster-wide ones (worker start)."""
        check_worker(self)

    @property
    def readonly_prefixes(self) -> tuple[str, ...]:
        """The prefixes no result is written under: OCR_READONLY_URLS, OCR_GOLDEN_SET's URL.

        The golden set is read-only when it names a URL (`s3://...`); a local folder
        is never a result target anyway (results are written to a bucket).
        """
        golden = (self.golden_set,) if "://" in self.golden_set else ()
        return (*self.readonly_urls, *golden)

    # The bound of the project's own Redis
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


def settings_markdown() -> str:
    """The whole of docs/settings.md."""
    return settings_markdown_of(Settings)
