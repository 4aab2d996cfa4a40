"""Settings' declarations: each one's variable, default and meaning; docs/settings.md.

Pure; runs in every process. docs/settings.md is generated from the declarations, in
`python worker_config.py > docs/settings.md` and in the docs test.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Setting:
    """One environment variable: its name, default and meaning."""

    env: str
    default: str
    doc: str


def setting(env: str, default: str, doc: str, secret: bool = False) -> Any:
    """A setting's field; a `secret` one is left out of the settings' repr (logs)."""
    return field(metadata={"setting": Setting(env, default, doc)}, repr=not secret)


_DOC_HEAD = """# Settings

Every setting is an environment variable, read and validated by
`tasks.settings.Settings.from_env()`: a bad value stops the process with a message
naming the variable. This file is generated: `python worker_config.py > docs/settings.md`.

"""
_DOC_TAIL = """
Procfile-only variables:

- `OCR_QUEUES`: queues the worker consumes besides its engine queue, default `ocr`;
- `WORKER_NAME`: node name prefix, default `cpu`;
- `LOG_LEVEL`;
- Flower's own `FLOWER_*` variables (`FLOWER_BASIC_AUTH`, `FLOWER_PORT`,
  `FLOWER_ADDRESS`), and `OCR_FLOWER_OPEN=1` (no auth, loopback only);
- `METRICS_ADDRESS` and `METRICS_PORT` of the metrics exporter (default 127.0.0.1:9808);
- `API_ADDRESS` and `API_PORT` of the HTTP API (default 127.0.0.1:8000);
- `API_FORWARDED_ALLOW_IPS`: the proxies (comma separated addresses or networks) whose
  `X-Forwarded-Proto` and `X-Forwarded-For` the API believes. Default none
  ([console.md](console.md#signing-in)).

Traces are configured by OpenTelemetry's standard variables alone, read by its SDK in
the API and the workers. Tracing is off unless an exporter is set
(`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
`OTEL_TRACES_EXPORTER`). `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`,
`OTEL_EXPORTER_OTLP_HEADERS` and the rest work as the SDK documents them
([operations.md](operations.md#traces)).
"""


def settings_markdown_of(settings_class: type) -> str:
    """The whole of docs/settings.md for the settings class given (`Settings`)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(settings_class):
        spec: Setting = f.metadata["setting"]
        default = spec.default if spec.env != "OCR_PROMPT" else "(a transcription prompt)"
        rows.append(f"| `{spec.env}` | `{default}` | {spec.doc} |")
    return _DOC_HEAD + "\n".join(rows) + "\n" + _DOC_TAIL
