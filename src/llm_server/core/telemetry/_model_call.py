"""The model-call span and metrics of the GenAI semantic conventions (private).

:class:`ModelCallRecorder` precomputes everything that is fixed per backend (span name, start
attributes, metric attributes) so that a call only adds what the response tells.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.streaming import current_sink
from llm_server.core.telemetry import _names as n
from llm_server.core.telemetry._redaction import redact
from llm_server.core.telemetry._signals import (
    INVALID_SPAN,
    NO_EXEMPLAR,
    OtelSignals,
    end_span,
    guarded,
    record_error,
)

__all__ = ["ModelCallInfo", "ModelCallRecorder"]


@dataclass(frozen=True, slots=True)
class ModelCallInfo:
    """What telemetry says about a backend's calls, filled from the model configuration.

    Attributes:
        provider: ``gen_ai.provider.name`` (``openai``, ``anthropic``, ``aws.bedrock``, ...).
        request_model: ``gen_ai.request.model``: the model name sent to the provider.
        operation: ``gen_ai.operation.name`` (``chat`` for DSPy's chat adapters).
        max_tokens: ``gen_ai.request.max_tokens``, when configured.
        temperature: ``gen_ai.request.temperature``, when configured.
        server_address: ``server.address``: the provider's host.
        server_port: ``server.port``: the provider's port.
        program_id: The program the backend serves, added to metrics when set.
    """

    provider: str
    request_model: str
    operation: str = "chat"
    max_tokens: int | None = None
    temperature: float | None = None
    server_address: str | None = None
    server_port: int | None = None
    program_id: str | None = None

    @classmethod
    def from_model_name(
        cls,
        model_name: str,
        *,
        api_base: str | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        program_id: str | None = None,
    ) -> ModelCallInfo:
        """Build the info from a LiteLLM-style ``provider/model`` name and an endpoint.

        The provider prefix is mapped to the conventions' well-known names (``azure`` becomes
        ``azure.ai.openai``, ``bedrock`` becomes ``aws.bedrock``, ...); the server address and
        port come from ``api_base``, or from the provider's public endpoint when it is unset.

        Args:
            model_name: ``provider/model`` (a bare model name means provider ``openai``).
            api_base: The configured endpoint, e.g. ``http://127.0.0.1:8001/v1``.
            max_tokens: The configured completion-token limit.
            temperature: The configured sampling temperature.
            program_id: The program the backend serves.
        """
        prefix, sep, rest = model_name.partition("/")
        if not sep:
            prefix, rest = "openai", model_name
        provider = n.PROVIDER_NAMES.get(prefix, prefix)
        address: str | None = None
        port: int | None = None
        if api_base:
            parts = urlsplit(api_base if "//" in api_base else f"//{api_base}")
            address = parts.hostname
            try:
                port = parts.port or (443 if parts.scheme == "https" else 80)
            except ValueError:  # a malformed port is not worth failing telemetry for
                port = None
        elif provider in n.DEFAULT_SERVERS:
            address, port = n.DEFAULT_SERVERS[provider]
        return cls(
            provider=provider,
            request_model=rest,
            max_tokens=max_tokens,
            temperature=temperature,
            server_address=address,
            server_port=port,
            program_id=program_id,
        )

    @classmethod
    def from_model_config(cls, config: Any, *, program_id: str | None = None) -> ModelCallInfo:
        """Build the info from a :class:`~llm_server.core.model_config.ModelConfig`.

        Args:
            config: The model's configuration (``model_name``, ``api_base``, ``max_tokens`` and
                ``additional_params['temperature']`` are read).
            program_id: The program the backend serves.
        """
        temperature = config.additional_params.get("temperature")
        return cls.from_model_name(
            config.model_name,
            api_base=config.api_base,
            max_tokens=config.max_tokens,
            temperature=float(temperature) if isinstance(temperature, int | float) else None,
            program_id=program_id,
        )


@dataclass(slots=True)
class ModelCall:
    """One model call in flight."""

    span: trace.Span
    token: object | None
    started: float


@dataclass(frozen=True, slots=True)
class _ResponseAttrs:
    """The metric attribute sets of the calls answered by one response model, built once."""

    duration: Mapping[str, Any]
    input_tokens: Mapping[str, Any]
    output_tokens: Mapping[str, Any]


# Distinct response models remembered per backend; past it (a provider naming each answer
# differently) the sets are built per call rather than growing without bound.
_MAX_RESPONSE_MODELS = 32


class ModelCallRecorder:
    """Opens, annotates and closes the span of each model call, and records its metrics.

    Everything fixed per backend is built once, here: the span name, the start attributes
    and the metric attribute sets (frozen, per response model), so that a call only adds what
    its response tells.
    """

    __slots__ = ("_by_response_model", "_metric_attrs", "_name", "_signals", "_start_attrs")

    def __init__(self, signals: OtelSignals, info: ModelCallInfo, model_id: str) -> None:
        self._signals = signals
        self._name = f"{info.operation} {info.request_model}"
        common: dict[str, Any] = {
            n.GEN_AI_OPERATION_NAME: info.operation,
            n.GEN_AI_PROVIDER_NAME: info.provider,
            n.GEN_AI_REQUEST_MODEL: info.request_model,
        }
        if info.server_address is not None:
            common[n.SERVER_ADDRESS] = info.server_address
        if info.server_port is not None:
            common[n.SERVER_PORT] = info.server_port
        common[n.MODEL_ID] = model_id
        if info.program_id is not None:
            common[n.PROGRAM_ID] = info.program_id
        self._metric_attrs: Mapping[str, Any] = MappingProxyType(dict(common))
        self._by_response_model: dict[str | None, _ResponseAttrs] = {}
        start = dict(common)
        if info.max_tokens is not None:
            start[n.GEN_AI_REQUEST_MAX_TOKENS] = info.max_tokens
        if info.temperature is not None:
            start[n.GEN_AI_REQUEST_TEMPERATURE] = info.temperature
        if signals.llm_attributes:
            start[n.LLM_REQUEST_TYPE] = info.operation
            start[n.LLM_REQUEST_MODEL] = info.request_model
            start[n.LLM_PROVIDER] = info.provider
            if info.max_tokens is not None:
                start[n.LLM_REQUEST_MAX_TOKENS] = info.max_tokens
            if info.temperature is not None:
                start[n.LLM_REQUEST_TEMPERATURE] = info.temperature
        self._start_attrs: Mapping[str, Any] = MappingProxyType(start)

    def start(self, input: Any) -> ModelCall:
        """Open the call's span and make it current."""
        span: trace.Span = INVALID_SPAN
        token: object | None = None
        try:
            signals = self._signals
            span = signals.tracer.start_span(
                self._name, kind=SpanKind.CLIENT, attributes=self._start_attrs
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            signals.active_calls.add(1, self._metric_attrs)
            if current_sink() is not None:
                span.set_attribute(n.GEN_AI_REQUEST_STREAM, True)
            if signals.capture_content:
                text = self._content(input)
                span.set_attribute(
                    n.GEN_AI_INPUT_MESSAGES,
                    json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}]),
                )
        except Exception as exc:
            guarded("start model span", exc)
        return ModelCall(span, token, time.perf_counter())

    def succeeded(self, call: ModelCall, output: ModelOutput) -> None:
        """Annotate and close the span with what ``output`` reports; record the metrics."""
        elapsed = time.perf_counter() - call.started
        try:
            self._signals.active_calls.add(-1, self._metric_attrs)
            self._streamed(call, cancelled=False)
            self._annotate(call.span, output, elapsed)
        except Exception as exc:
            guarded("annotate model span", exc)
        finally:
            end_span(call.span, call.token)

    def failed(self, call: ModelCall, exc: BaseException) -> None:
        """Mark the span failed, close it and record the duration with ``error.type``."""
        elapsed = time.perf_counter() - call.started
        try:
            self._signals.active_calls.add(-1, self._metric_attrs)
            self._streamed(call, cancelled=isinstance(exc, asyncio.CancelledError))
            kind = record_error(call.span, exc)
            attrs = dict(self._metric_attrs)
            attrs[n.ERROR_TYPE] = kind
            self._signals.operation_duration.record(elapsed, attrs)
        except Exception as error:
            guarded("record model call failure", error)
        finally:
            end_span(call.span, call.token)

    def _streamed(self, call: ModelCall, *, cancelled: bool) -> None:
        """A streamed call's first-chunk event and chunk timings (nothing for a plain call)."""
        sink = current_sink()
        if sink is None or sink.first_piece_at is None:
            if sink is not None and cancelled:
                call.span.add_event(n.EVENT_STREAM_CANCELLED, {n.STREAM_CHUNKS: 0})
            return
        signals, now = self._signals, time.perf_counter()
        first = sink.first_piece_at - call.started
        signals.time_to_first_chunk.record(first, self._metric_attrs)
        if sink.pieces > 1:
            per_chunk = (now - sink.first_piece_at) / (sink.pieces - 1)
            signals.time_per_output_chunk.record(per_chunk, self._metric_attrs)
        when = time.time_ns() - int((now - sink.first_piece_at) * 1e9)
        call.span.add_event(n.EVENT_FIRST_CHUNK, {n.TIME_TO_FIRST_CHUNK_S: first}, when)
        if cancelled:  # the reader left (a client gone) in the middle of the stream
            call.span.add_event(n.EVENT_STREAM_CANCELLED, {n.STREAM_CHUNKS: sink.pieces})

    def cut(self, output: ModelOutput) -> None:
        """Record a call cut after it was sent: its estimated input tokens, cost and count."""
        usage = output.usage
        try:
            signals = self._signals
            attrs = dict(self._metric_attrs)
            if usage is not None:
                signals.token_usage.record(
                    usage.input_tokens, {**attrs, n.GEN_AI_TOKEN_TYPE: "input"}
                )
            if output.cost_usd:
                signals.cost.add(output.cost_usd, attrs)
            signals.counters[n.METRIC_CUT_CALLS].add(1, attrs)
            event: dict[str, Any] = {n.MODEL_ID: output.model_id}
            if usage is not None:
                event[n.GEN_AI_USAGE_INPUT_TOKENS] = usage.input_tokens
                event[n.TOKEN_METHOD] = str(usage.method)
            signals.event(n.EVENT_CALL_CUT, event)
        except Exception as exc:
            guarded("record cut model call", exc)

    def rejected(self, output: ModelOutput) -> None:
        """Record the billed calls of an attempt that failed after they came back.

        Their tokens and cost go into the token and cost metrics (with ``error.type``, the
        outcome), and an unusable answer is counted by program, version, model and kind.
        """
        usage = output.usage
        outcome = str(output.metadata.get("outcome", "error"))
        try:
            signals = self._signals
            attrs = dict(self._metric_attrs)
            if output.response_model:
                attrs[n.GEN_AI_RESPONSE_MODEL] = output.response_model
            attrs[n.ERROR_TYPE] = outcome
            if usage is not None and usage.method not in _UNCOUNTED:
                signals.token_usage.record(
                    usage.input_tokens, {**attrs, n.GEN_AI_TOKEN_TYPE: "input"}, NO_EXEMPLAR
                )
                signals.token_usage.record(
                    usage.output_tokens, {**attrs, n.GEN_AI_TOKEN_TYPE: "output"}, NO_EXEMPLAR
                )
            if output.cost_usd:
                signals.cost.add(output.cost_usd, self._metric_attrs, NO_EXEMPLAR)
            if outcome in n.PARSE_FAILURE_KINDS:
                failure = dict(self._metric_attrs)
                failure[n.MODEL_ID] = output.model_id
                failure[n.ANSWER_KIND] = outcome
                version = output.metadata.get("program_version")
                if isinstance(version, str):
                    failure[n.PROGRAM_VERSION] = version
                signals.counters[n.METRIC_PARSE_FAILURES].add(1, failure)
        except Exception as exc:
            guarded("record rejected model call", exc)

    def _annotate(self, span: trace.Span, output: ModelOutput, elapsed: float) -> None:
        signals = self._signals
        usage = output.usage
        counted = usage if usage is not None and usage.method not in _UNCOUNTED else None
        attrs = self._response_metric_attrs(output.response_model)
        if span.is_recording():  # an unsampled span drops them: not built (~2 us per call)
            span.set_attributes(self._response_attrs(output, counted))
        # The duration keeps its exemplar (a slow bucket links to a trace); tokens and cost
        # are recorded without one: the same call's span already carries both.
        signals.operation_duration.record(elapsed, attrs.duration)
        if signals.full:
            waited = output.metadata.get("connection_wait_ms")
            if isinstance(waited, int | float):
                signals.connection_wait.record(waited / 1000, self._metric_attrs)
                span.set_attribute(n.CONNECTION_WAIT_S, waited / 1000)
        if counted is not None:
            signals.token_usage.record(counted.input_tokens, attrs.input_tokens, NO_EXEMPLAR)
            signals.token_usage.record(counted.output_tokens, attrs.output_tokens, NO_EXEMPLAR)
        if output.cost_usd:
            signals.cost.add(output.cost_usd, self._metric_attrs, NO_EXEMPLAR)

    def _response_metric_attrs(self, response_model: str | None) -> _ResponseAttrs:
        """The frozen attribute sets of calls answered by ``response_model`` (built once)."""
        found = self._by_response_model.get(response_model)
        if found is not None:
            return found
        duration = dict(self._metric_attrs)
        if response_model:
            duration[n.GEN_AI_RESPONSE_MODEL] = response_model
        found = _ResponseAttrs(
            duration=MappingProxyType(duration),
            input_tokens=MappingProxyType({**duration, n.GEN_AI_TOKEN_TYPE: "input"}),
            output_tokens=MappingProxyType({**duration, n.GEN_AI_TOKEN_TYPE: "output"}),
        )
        if len(self._by_response_model) < _MAX_RESPONSE_MODELS:
            self._by_response_model[response_model] = found
        return found

    def _response_attrs(self, output: ModelOutput, counted: TokenUsage | None) -> dict[str, Any]:
        legacy = self._signals.llm_attributes
        attrs: dict[str, Any] = {n.ATTEMPTS: output.attempts}
        if output.response_model:
            attrs[n.GEN_AI_RESPONSE_MODEL] = output.response_model
            if legacy:
                attrs[n.LLM_RESPONSE_MODEL] = output.response_model
        if output.finish_reasons:
            attrs[n.GEN_AI_RESPONSE_FINISH_REASONS] = list(output.finish_reasons)
        if output.model_id != self._metric_attrs[n.MODEL_ID]:  # a fallback model answered
            attrs[n.RESPONSE_MODEL_ID] = output.model_id
        if output.usage is not None:
            attrs[n.TOKEN_METHOD] = str(output.usage.method)
        if counted is not None:
            attrs[n.GEN_AI_USAGE_INPUT_TOKENS] = counted.input_tokens
            attrs[n.GEN_AI_USAGE_OUTPUT_TOKENS] = counted.output_tokens
            if counted.cached_input_tokens is not None:
                attrs[n.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = counted.cached_input_tokens
            if legacy:
                attrs[n.LLM_USAGE_PROMPT_TOKENS] = counted.input_tokens
                attrs[n.LLM_USAGE_COMPLETION_TOKENS] = counted.output_tokens
                attrs[n.LLM_USAGE_TOTAL_TOKENS] = counted.total_tokens
        if output.cost_usd is not None:
            attrs[n.COST_USD] = output.cost_usd
        if self._signals.capture_content:
            message: dict[str, Any] = {
                "role": "assistant",
                "parts": [{"type": "text", "content": self._content(output.content)}],
            }
            if output.finish_reasons:
                message["finish_reason"] = output.finish_reasons[0]
            attrs[n.GEN_AI_OUTPUT_MESSAGES] = json.dumps([message])
        return attrs

    def _content(self, value: Any) -> str:
        """``value`` as redacted text of at most ``content_max_length`` characters."""
        to_dict = getattr(value, "toDict", None)  # dspy.Prediction
        if callable(to_dict):
            value = to_dict()
        if isinstance(value, str):
            text = value
        else:
            try:
                text = json.dumps(value, default=str, ensure_ascii=False)
            except (TypeError, ValueError):
                text = str(value)
        return redact(text)[: self._signals.content_max_length]


# Cache hits bill nothing and "unavailable" means unknown: neither is a token count.
_UNCOUNTED = frozenset(
    {TokenCountMethod.CACHED, TokenCountMethod.UNAVAILABLE, TokenCountMethod.CUT_ESTIMATE}
)
