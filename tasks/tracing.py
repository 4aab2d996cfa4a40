"""Traces: the only module that imports opentelemetry (the SDK and its instrumentations).

Runs in the processes that trace: each worker pool child (`worker_process_init`, never
the worker parent before it forks), the one process of a thread-pool worker (vlm-api,
control), and the HTTP API. Configured by the standard `OTEL_*` variables only, read
by the SDK itself (endpoint, headers, sampler, batch sizes, resource); tracing is on
only where an exporter is set: `OTEL_TRACES_EXPORTER=otlp` (or `console`), or an OTLP
endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); never
with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. Off, every function here
is a no-op of one attribute check, and opentelemetry is not even imported.

On, a job is one trace: the API request (continuing an incoming W3C `traceparent`),
Celery's publish and run spans (the standard Celery instrumentation: `traceparent` and
`tracestate` travel as message headers), the engine's read (`span("ocr.read")`), the
request to the inference server (the standard httpx instrumentation, for openai's
httpx2 client, sends `traceparent`), the callback POST and the result's write.
Exports go over OTLP/HTTP (protobuf) from a batch processor's thread; a collector that
is down costs dropped spans, never a job.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

log = logging.getLogger(__name__)

TRACE_HEADERS = ("traceparent", "tracestate")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_EXPORTERS = ("otlp", "console")
_PUBLISHING_KEPT = 1000  # publish spans awaiting `after_task_publish` (a failed send has none)


class Span:
    """A span being recorded: `set()` adds attributes (None values are left out)."""

    __slots__ = ("_span",)

    def __init__(self, span: Any) -> None:
        self._span = span

    def set(self, attributes: Mapping[str, Any]) -> None:
        for key, value in attributes.items():
            if value is not None:
                self._span.set_attribute(key, value)


class _NoSpan(Span):
    """What `span()` gives while tracing is off: records nothing."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__(None)

    def set(self, attributes: Mapping[str, Any]) -> None:
        return None


_NO_SPAN = _NoSpan()
_OFF: AbstractContextManager[Span] = nullcontext(_NO_SPAN)
_tracer: Any = None       # the process's tracer while tracing is on
_provider: Any = None


def exporters(env: Mapping[str, str] | None = None) -> list[str]:
    """The exporters the `OTEL_*` variables ask for; [] means tracing is off."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [n.strip().lower() for n in env.get("OTEL_TRACES_EXPORTER", "").split(",")
             if n.strip()]
    if named:
        return [] if "none" in named else named
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or \
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return ["otlp"] if endpoint and endpoint.strip() else []


def enabled() -> bool:
    """Whether this process records traces (`start` turned them on)."""
    return _tracer is not None


def start(service: str, *, celery: bool = True, httpx: bool = False,
          env: Mapping[str, str] | None = None) -> bool:
    """Turn tracing on in this process when an exporter is configured; True when on.

    `service` is `service.name` unless OTEL_SERVICE_NAME (or OTEL_RESOURCE_ATTRIBUTES)
    names one. `celery`: trace task publishes and runs; `httpx`: requests made with
    httpx or httpx2 (openai's: the inference server's client). Once per process, after
    any fork.
    """
    global _tracer, _provider
    if _tracer is not None:
        return True
    env = os.environ if env is None else env
    wanted = exporters(env)
    if not wanted:
        return False
    unknown = [name for name in wanted if name not in _EXPORTERS]
    protocol = (env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or
                env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if "otlp" in wanted and protocol != "http/protobuf":
        unknown.append(f"otlp over {protocol}")
    if unknown:
        log.error("tracing off: OTEL_TRACES_EXPORTER/OTEL_EXPORTER_OTLP_PROTOCOL ask for "
                  "%s; this service exports otlp over http/protobuf (port 4318) or to the "
                  "console", ", ".join(unknown))
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    for name in wanted:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
                OTLPSpanExporter,
            )

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        else:
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    if celery:
        _celery_instrumentor().instrument(tracer_provider=provider)
    if httpx:  # openai's client is httpx2 (the vlm-api engine's), others' httpx
        from opentelemetry.instrumentation import httpx as instrumented

        for name, instrumentor in (("httpx", instrumented.HTTPXClientInstrumentor),
                                   ("httpx2", instrumented.HTTPX2ClientInstrumentor)):
            if importlib.util.find_spec(name) is not None:
                instrumentor().instrument(tracer_provider=provider)
    _provider = provider
    _tracer = trace.get_tracer("ocr-queue")
    log.info("tracing on: service %s, exporting to %s (pid %d)",
             resource.attributes.get(SERVICE_NAME), ", ".join(wanted), os.getpid())
    return True


def instrument_fastapi(app: Any) -> None:
    """Trace the HTTP API's requests (continuing a request's `traceparent`); no-op off."""
    if _tracer is None:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    # No spans of their own for each ASGI message, nor for the probes' polls.
    FastAPIInstrumentor.instrument_app(app, tracer_provider=_provider,
                                       exclude_spans=["receive", "send"],
                                       excluded_urls="/healthz,/readyz")


def shutdown() -> None:
    """Export what is buffered and stop tracing (a pool child that exits, a stopping API)."""
    global _tracer, _provider
    provider, _provider, _tracer = _provider, None, None
    if provider is not None:
        provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None,
         kind: str = "internal") -> AbstractContextManager[Span]:
    """A span around a block, the current one inside it; `kind`: internal or client.

    An exception that leaves the block is recorded on the span (status ERROR).
    """
    if _tracer is None:
        return _OFF
    return _recording(name, attributes, kind)


@contextmanager
def _recording(name: str, attributes: Mapping[str, Any] | None,
               kind: str) -> Iterator[Span]:
    from opentelemetry.trace import SpanKind

    kinds = {"internal": SpanKind.INTERNAL, "client": SpanKind.CLIENT}
    clean = {k: v for k, v in (attributes or {}).items() if v is not None}
    with _tracer.start_as_current_span(name, kind=kinds[kind], attributes=clean) as current:
        yield Span(current)


def current_trace_id() -> str | None:
    """The trace id (32 hex digits) of the span running now, or None (none, or off)."""
    if _tracer is None:
        return None
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


def inject(headers: dict[str, str]) -> None:
    """Add `traceparent` (and `tracestate`) of the running span to outgoing `headers`."""
    if _tracer is None:
        return
    from opentelemetry import propagate

    propagate.inject(headers)


def trace_id_of(traceparent: object) -> str | None:
    """The trace id a W3C `traceparent` value names, or None when it is not one."""
    if not isinstance(traceparent, str):
        return None
    found = _TRACEPARENT.match(traceparent.strip())
    if found is None or found.group(1) == "0" * 32:
        return None
    return found.group(1)


def headers_of(request: Any) -> dict[str, str]:
    """The trace headers a Celery request carries, to pass on to a message it causes.

    Plain strings, no opentelemetry: the worker parent, which traces nothing, keeps the
    trace of a page it records as lost this way.
    """
    extra = getattr(request, "headers", None)
    headers = {}
    for name in TRACE_HEADERS:
        value = getattr(request, name, None) or (extra.get(name) if isinstance(extra, dict)
                                                 else None)
        if isinstance(value, str) and value:
            headers[name] = value
    return headers


@contextmanager
def continued(traceparent: str | None) -> Iterator[None]:
    """Make the span a W3C `traceparent` names the parent of what runs inside.

    Only where this process traces and runs no span of its own (the API's request span
    has continued the same `traceparent` already).
    """
    if _tracer is None or trace_id_of(traceparent) is None or current_trace_id():
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract({"traceparent": str(traceparent)}))
    try:
        yield
    finally:
        context.detach(token)


def _celery_instrumentor() -> Any:
    """The standard Celery instrumentation, its publish spans kept by task id.

    Its own publish hook finds the span again through the task's class, so a message
    sent by name (`send_task`) of a task this process does not define (the API sends
    `ocr.document`, a worker a caller's `callback_task`) left its span open and its
    context attached to the thread. Here a publish span is never made current: it is
    started as a child of the current span, its context injected into the message
    headers, and ended by `after_task_publish`.
    """
    from opentelemetry import trace
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.propagate import inject as inject_into

    class Instrumentor(CeleryInstrumentor):
        _publishing: dict[str, Any] = {}

        def _trace_before_publish(self, *args: Any, **kwargs: Any) -> None:
            headers = kwargs.get("headers")
            task_id = headers.get("id") if isinstance(headers, dict) else None
            if not isinstance(task_id, str):
                return
            name = str(kwargs.get("sender") or "unknown")
            span = self._tracer.start_span(
                f"apply_async/{name}", kind=trace.SpanKind.PRODUCER,
                attributes={"celery.action": "apply_async", "celery.task_name": name,
                            "messaging.message.id": task_id,
                            "messaging.destination.name": str(kwargs.get("routing_key"))})
            inject_into(headers, context=trace.set_span_in_context(span))
            while len(self._publishing) >= _PUBLISHING_KEPT:
                self._publishing.pop(next(iter(self._publishing)))
            self._publishing[task_id] = span

        def _trace_after_publish(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
            headers = kwargs.get("headers")
            task_id = headers.get("id") if isinstance(headers, dict) else None
            span = self._publishing.pop(task_id, None) if isinstance(task_id, str) else None
            if span is not None:
                span.end()

    return Instrumentor()
