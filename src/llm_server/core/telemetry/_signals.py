"""The two implementations behind :class:`~llm_server.core.opentelemetry_integration.Telemetry`.

:class:`NoopSignals` is chosen once, when telemetry is disabled, so hot paths never test a flag.
:class:`OtelSignals` talks to the OpenTelemetry API (never an SDK). Every call into OpenTelemetry
is guarded: a failing processor, exporter or instrument is logged once and the request goes on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from llm_server.core.telemetry import _names as n
from llm_server.core.telemetry._redaction import redact

__all__ = [
    "INVALID_SPAN",
    "NO_EXEMPLAR",
    "NoopSignals",
    "OtelSignals",
    "breaker_name",
    "end_span",
    "guarded",
    "record_error",
    "state_name",
]

_log = logging.getLogger("llm_server.telemetry")
_reported: set[str] = set()
_NULL_SCOPE: AbstractContextManager[None] = contextlib.nullcontext()
# What the default detail level holds instead of the per-call extras' instruments.
_NOOP_HISTOGRAM: metrics.Histogram = metrics.NoOpHistogram("llm_server.disabled")
_NOOP_UP_DOWN_COUNTER: metrics.UpDownCounter = metrics.NoOpUpDownCounter("llm_server.disabled")
# A span we can always call methods on when starting the real one failed.
INVALID_SPAN = trace.INVALID_SPAN
# Recording a measurement in this context offers no exemplar to the SDK's default
# (trace-based) exemplar filter: its span is the invalid one. Used where an exemplar would add
# nothing. (Not an empty Context: the SDK reads an empty, falsy one as "the current context".)
NO_EXEMPLAR: otel_context.Context = trace.set_span_in_context(INVALID_SPAN, otel_context.Context())


def guarded(site: str, exc: BaseException) -> None:
    """Report a telemetry failure: a warning the first time per site, debug afterwards."""
    if site in _reported:
        _log.debug("telemetry failure in %s: %r", site, exc)
        return
    _reported.add(site)
    _log.warning(
        "telemetry failure in %s (the request is unaffected): %s",
        site,
        redact(f"{type(exc).__name__}: {exc}"),
    )


def record_error(span: trace.Span, exc: BaseException) -> str:
    """Mark ``span`` failed with a redacted exception event; return the ``error.type``."""
    kind = n.error_type(exc)
    message = redact(str(exc))
    span.set_attribute(n.ERROR_TYPE, kind)
    span.set_status(Status(StatusCode.ERROR, message or kind))
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    span.add_event(
        "exception",
        {
            "exception.type": n.qualified_name(exc),
            "exception.message": message,
            "exception.stacktrace": redact(stack),
        },
    )
    return kind


class _SpanScope:
    """Times a block in a span of its own and records its duration in a histogram.

    ``histogram=None`` makes a span-only scope; ``server_if_root`` starts a ``SERVER`` span when
    there is no active span (an incoming request) and an ``INTERNAL`` one otherwise.
    """

    __slots__ = (
        "_attrs",
        "_histogram",
        "_metric_attrs",
        "_name",
        "_server_if_root",
        "_span",
        "_started",
        "_token",
        "_tracer",
    )

    def __init__(
        self,
        name: str,
        attrs: Mapping[str, Any],
        histogram: metrics.Histogram | None,
        metric_attrs: dict[str, Any],
        tracer: trace.Tracer,
        *,
        server_if_root: bool = False,
    ) -> None:
        self._name = name
        self._attrs = attrs
        self._histogram = histogram
        self._server_if_root = server_if_root
        self._metric_attrs = metric_attrs
        self._tracer = tracer
        self._span: trace.Span = INVALID_SPAN
        self._token: object | None = None
        self._started = 0.0

    def __enter__(self) -> None:
        try:
            kind = SpanKind.INTERNAL
            if self._server_if_root and not trace.get_current_span().get_span_context().is_valid:
                kind = SpanKind.SERVER
            self._span = self._tracer.start_span(self._name, kind=kind, attributes=self._attrs)
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        except Exception as exc:
            guarded("start span", exc)
        self._started = time.perf_counter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        elapsed = time.perf_counter() - self._started
        try:
            attrs = self._metric_attrs
            if exc is None:
                attrs[n.OUTCOME] = "ok"
            else:
                attrs[n.OUTCOME] = "error"
                attrs[n.ERROR_TYPE] = record_error(self._span, exc)
            if self._histogram is not None:
                self._histogram.record(elapsed, attrs)
        except Exception as error:
            guarded("record span outcome", error)
        finally:
            end_span(self._span, self._token)


def end_span(span: trace.Span, token: object | None) -> None:
    try:
        span.end()
    except Exception as exc:
        guarded("end span", exc)
    if token is not None:
        try:
            otel_context.detach(token)  # type: ignore[arg-type]
        except Exception as exc:
            guarded("detach context", exc)


class NoopSignals:
    """Telemetry disabled: every method returns at once and nothing is created."""

    enabled = False

    def request_scope(
        self, name: str, attrs: Mapping[str, Any] | None
    ) -> AbstractContextManager[None]:
        """A reusable null context."""
        return _NULL_SCOPE

    def pipeline_scope(self, pipeline: str) -> AbstractContextManager[None]:
        """A reusable null context."""
        return _NULL_SCOPE

    def step_scope(self, pipeline: str, step: str, index: int) -> AbstractContextManager[None]:
        """A reusable null context."""
        return _NULL_SCOPE

    def observe_breakers(self, breakers: Iterable[Any]) -> None:
        """Do nothing."""

    def observe_limits(self, limiters: Iterable[Any], fleet: Any, budgets: Any = None) -> None:
        """Do nothing."""

    def observe_caches(self, caches: Iterable[Any]) -> None:
        """Do nothing."""


class OtelSignals:
    """Telemetry enabled: spans, events and instruments through the OpenTelemetry API."""

    enabled = True

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None,
        meter_provider: metrics.MeterProvider | None,
        version: str,
        capture_content: bool,
        content_max_length: int,
        llm_attributes: bool,
        full: bool = False,
    ) -> None:
        self.capture_content = capture_content
        self.content_max_length = content_max_length
        self.llm_attributes = llm_attributes
        # Decided once: at the default detail level the per-call extras are the API's no-op
        # instruments and pipelines and steps get the null scope, so no hot path tests a flag.
        self.full = full
        self.tracer = trace.get_tracer("llm_server", version, tracer_provider=tracer_provider)
        meter = metrics.get_meter("llm_server", version, meter_provider=meter_provider)
        self.operation_duration = _histogram(
            meter,
            n.METRIC_OPERATION_DURATION,
            "s",
            "GenAI operation duration.",
            n.OPERATION_DURATION_BUCKETS,
        )
        self.token_usage = _histogram(
            meter,
            n.METRIC_TOKEN_USAGE,
            "{token}",
            "Number of input and output tokens used.",
            n.TOKEN_USAGE_BUCKETS,
        )
        self.connection_wait: metrics.Histogram = _NOOP_HISTOGRAM
        if full:
            self.connection_wait = _histogram(
                meter,
                n.METRIC_CONNECTION_WAIT,
                "s",
                "Time a model call waited for a free connection of its model's pool "
                "(max_connections); measured on DSPy's native engine.",
                n.CONNECTION_WAIT_BUCKETS,
            )
        self.time_to_first_chunk = _histogram(
            meter,
            n.METRIC_TIME_TO_FIRST_CHUNK,
            "s",
            "Time from the start of a streamed call to its first output chunk.",
            n.TIME_TO_FIRST_CHUNK_BUCKETS,
        )
        self.time_per_output_chunk = _histogram(
            meter,
            n.METRIC_TIME_PER_OUTPUT_CHUNK,
            "s",
            "Time between the output chunks of a streamed call, after the first.",
            n.TIME_PER_OUTPUT_CHUNK_BUCKETS,
        )
        self.pipeline_duration: metrics.Histogram = _NOOP_HISTOGRAM
        self.step_duration: metrics.Histogram = _NOOP_HISTOGRAM
        if full:
            self.pipeline_duration = _histogram(
                meter,
                n.METRIC_PIPELINE_DURATION,
                "s",
                "Duration of one pipeline execution.",
                n.PIPELINE_DURATION_BUCKETS,
            )
            self.step_duration = _histogram(
                meter,
                n.METRIC_STEP_DURATION,
                "s",
                "Duration of one pipeline step.",
                n.PIPELINE_DURATION_BUCKETS,
            )
        self.counters: dict[str, metrics.Counter] = {
            n.METRIC_COST: meter.create_counter(
                n.METRIC_COST, unit="{USD}", description="Cost of model calls in US dollars."
            ),
            n.METRIC_BREAKER_TRANSITIONS: meter.create_counter(
                n.METRIC_BREAKER_TRANSITIONS,
                unit="{transition}",
                description="Circuit breaker state transitions.",
            ),
            n.METRIC_RETRIES: meter.create_counter(
                n.METRIC_RETRIES, unit="{retry}", description="Model call attempts retried."
            ),
            n.METRIC_FALLBACKS: meter.create_counter(
                n.METRIC_FALLBACKS,
                unit="{fallback}",
                description="Model calls handed to a fallback model.",
            ),
            n.METRIC_PARSE_FAILURES: meter.create_counter(
                n.METRIC_PARSE_FAILURES,
                unit="{answer}",
                description=(
                    "Model answers that could not be used (unparseable, truncated, empty, "
                    "refused), by program, version, model and kind: each one billed."
                ),
            ),
            n.METRIC_CUT_CALLS: meter.create_counter(
                n.METRIC_CUT_CALLS,
                unit="{call}",
                description=(
                    "Model calls cut (request deadline, client gone) after they were sent: "
                    "billed, their input tokens estimated."
                ),
            ),
        }
        self.cost = self.counters[n.METRIC_COST]  # looked up once, used on every call
        self.active_calls: metrics.UpDownCounter = _NOOP_UP_DOWN_COUNTER
        if full:
            self.active_calls = meter.create_up_down_counter(
                n.METRIC_ACTIVE_CALLS,
                unit="{call}",
                description=(
                    "Model calls in flight, per model: near a model's max_connections, calls "
                    "queue for a connection."
                ),
            )
        self.loop_lag = _histogram(
            meter,
            n.METRIC_LOOP_LAG,
            "s",
            "How late the event loop ran a timer: time every ready task waited for the loop.",
            n.LOOP_LAG_BUCKETS,
        )
        self._breakers: list[Any] = []
        meter.create_observable_gauge(
            n.METRIC_BREAKER_STATE,
            callbacks=[self._observe_breaker_states],
            unit="1",
            description="1 for the circuit breaker's current state, 0 for the others.",
        )
        # Read from the breakers' own counts at collection time: a refusal must cost next to
        # nothing, and an open breaker refuses thousands of calls a second.
        meter.create_observable_counter(
            n.METRIC_BREAKER_REFUSALS,
            callbacks=[self._observe_breaker_refusals],
            unit="{call}",
            description="Calls refused by an open circuit breaker.",
        )
        self._limiters: list[Any] = []
        self._budgets: list[Any] = []
        self._caches: list[Any] = []
        meter.create_observable_counter(
            n.METRIC_CACHE_REQUESTS,
            callbacks=[self._observe_caches],
            unit="{call}",
            description="Lookups in a model's shared response cache, by hit (true/false).",
        )
        self._fleet: Any = None
        meter.create_observable_counter(
            n.METRIC_BUDGET_REFUSALS,
            callbacks=[self._observe_budget_refusals],
            unit="{call}",
            description="Calls refused because the tenant spent its budget (never sent).",
        )
        meter.create_observable_counter(
            n.METRIC_RATE_LIMIT_REFUSALS,
            callbacks=[self._observe_limit_refusals],
            unit="{call}",
            description="Calls refused by a model's rate_limit (never sent), fleet or local.",
        )
        meter.create_observable_gauge(
            n.METRIC_FLEET_FALLBACK,
            callbacks=[self._observe_fleet],
            unit="1",
            description="1 while this process lost Redis and keeps breakers and limits alone.",
        )

    # --- requests and pipelines ---------------------------------------------------------

    def request_scope(
        self, name: str, attrs: Mapping[str, Any] | None
    ) -> AbstractContextManager[None]:
        """A ``SERVER`` span around one incoming request, unless one is already active.

        A host (or FastAPI itself, once an SDK is configured) that already traces the request
        keeps its span as the parent of everything inside: a second, internal span per request
        would tell nothing new and cost every request, refused ones included.
        """
        if trace.get_current_span().get_span_context().is_valid:
            return _NULL_SCOPE
        return _SpanScope(name, attrs or {}, None, {}, self.tracer, server_if_root=True)

    def pipeline_scope(self, pipeline: str) -> AbstractContextManager[None]:
        """A span and duration measurement for one pipeline execution (``full`` detail only:
        the request's server span and the model-call span already time it)."""
        if not self.full:
            return _NULL_SCOPE
        return _SpanScope(
            f"pipeline {pipeline}",
            {n.PIPELINE: pipeline},
            self.pipeline_duration,
            {n.PIPELINE: pipeline},
            self.tracer,
        )

    def step_scope(self, pipeline: str, step: str, index: int) -> AbstractContextManager[None]:
        """A child span and duration measurement for one pipeline step (``full`` detail only)."""
        if not self.full:
            return _NULL_SCOPE
        return _SpanScope(
            f"step {step}",
            {n.PIPELINE: pipeline, n.STEP: step, n.STEP_INDEX: index},
            self.step_duration,
            {n.PIPELINE: pipeline, n.STEP: step},
            self.tracer,
        )

    # --- events and counters -----------------------------------------------------------

    def event(self, name: str, attrs: Mapping[str, Any]) -> None:
        """Add an event to the current span (a no-op when no span is recording)."""
        try:
            trace.get_current_span().add_event(name, attrs)
        except Exception as exc:
            guarded(f"event {name}", exc)

    def count(self, metric: str, attrs: Mapping[str, Any], amount: float = 1) -> None:
        """Add ``amount`` to one of the counters."""
        try:
            self.counters[metric].add(amount, attrs)
        except Exception as exc:
            guarded(f"counter {metric}", exc)

    # --- circuit breakers ----------------------------------------------------------------

    def observe_breakers(self, breakers: Iterable[Any]) -> None:
        """Report the state and refusals of ``breakers`` in their metrics from now on."""
        for breaker in breakers:
            if not any(b is breaker for b in self._breakers):
                self._breakers.append(breaker)

    def observe_limits(self, limiters: Iterable[Any], fleet: Any, budgets: Any = None) -> None:
        """Report rate-limit and budget refusals, and the fleet's fallback mode."""
        self._limiters.extend(limiters)
        if fleet is not None:
            self._fleet = fleet
        if budgets is not None:
            self._budgets.append(budgets)

    def _observe_limit_refusals(
        self, options: metrics.CallbackOptions
    ) -> list[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for limiter in list(self._limiters):
            for fleet, count in ((True, limiter.refused_fleet), (False, limiter.refused_local)):
                attrs = {n.RATE_LIMIT: limiter.key, n.FLEET_DECISION: fleet}
                observations.append(metrics.Observation(int(count), attrs))
        return observations

    def observe_caches(self, caches: Iterable[Any]) -> None:
        """Report the hits and misses of these shared caches."""
        self._caches.extend(caches)

    def _observe_caches(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for cache in list(self._caches):
            for hit, count in ((True, cache.hits), (False, cache.misses)):
                attrs = {n.MODEL_ID: cache.model_id, n.CACHE_HIT: hit}
                observations.append(metrics.Observation(int(count), attrs))
        return observations

    def _observe_budget_refusals(
        self, options: metrics.CallbackOptions
    ) -> list[metrics.Observation]:
        fleet_count = sum(b.refused_fleet for b in self._budgets)
        local_count = sum(b.refused_local for b in self._budgets)
        if not self._budgets:
            return []
        return [
            metrics.Observation(fleet_count, {n.FLEET_DECISION: True}),
            metrics.Observation(local_count, {n.FLEET_DECISION: False}),
        ]

    def _observe_fleet(self, options: metrics.CallbackOptions) -> list[metrics.Observation]:
        if self._fleet is None:
            return []
        return [metrics.Observation(1 if self._fleet.connection.fallback else 0)]

    def _observe_breaker_refusals(
        self, options: metrics.CallbackOptions
    ) -> list[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for breaker in list(self._breakers):
            try:
                name = breaker_name(breaker)
                refused = int(breaker.snapshot().refused)
            except Exception as exc:
                guarded("observe breaker refusals", exc)
                continue
            observations.append(metrics.Observation(refused, {n.BREAKER: name}))
        return observations

    def _observe_breaker_states(
        self, options: metrics.CallbackOptions
    ) -> list[metrics.Observation]:
        observations: list[metrics.Observation] = []
        for breaker in list(self._breakers):
            try:
                name = breaker_name(breaker)
                current = state_name(_read_state(breaker))
            except Exception as exc:
                guarded("observe breaker state", exc)
                continue
            states: tuple[str, ...] = (*n.BREAKER_STATES, "forced_open", "disabled")
            if current not in states:
                states = (*states, current)
            for state in states:
                observations.append(
                    metrics.Observation(
                        1 if state == current else 0, {n.BREAKER: name, n.BREAKER_STATE: state}
                    )
                )
        return observations


def _histogram(
    meter: metrics.Meter, name: str, unit: str, description: str, buckets: Iterable[float]
) -> metrics.Histogram:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=[*buckets]
        )
    except TypeError:  # opentelemetry-api < 1.23 has no advisory parameter
        return meter.create_histogram(name, unit=unit, description=description)


def breaker_name(breaker: Any) -> str:
    """The breaker's name (duck-typed: ``name`` attribute, else the class name)."""
    name = getattr(breaker, "name", None)
    return name if isinstance(name, str) and name else type(breaker).__name__


def state_name(state: Any) -> str:
    """Normalise a breaker state (an enum, ``"half-open"``, ...) to ``closed``/``half_open``/..."""
    value = getattr(state, "value", state)
    if not isinstance(value, str):
        value = getattr(state, "name", str(state))
    return str(value).strip().lower().replace("-", "_").replace(" ", "_")


def _read_state(breaker: Any) -> Any:
    state = getattr(breaker, "state", None)
    if callable(state):  # a method rather than a property
        state = state()
    if state is None:
        snapshot: Callable[[], Any] | None = getattr(breaker, "snapshot", None)
        if snapshot is not None:
            state = snapshot().state
    return getattr(state, "value", state) if state is not None else "unknown"
