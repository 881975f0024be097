"""Listeners that turn breaker and reliability events into span events and counters (private).

Public as :class:`~llm_server.core.opentelemetry_integration.TelemetryListener`.
"""

from __future__ import annotations

from typing import Any

from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.telemetry import _names as n
from llm_server.core.telemetry._observation import StepTiming
from llm_server.core.telemetry._signals import OtelSignals, breaker_name, guarded, state_name

__all__ = ["RecordingListener", "TelemetryListener"]


class TelemetryListener:
    """Records circuit-breaker transitions and each request's retries, fallbacks and refusals.

    It is both a breaker listener (:meth:`on_state_change`, registered with every model's
    breaker) and a :class:`~llm_server.core.telemetry.RequestObserver` (attached by
    :class:`~llm_server.core.opentelemetry_integration.InstrumentedBackend` for the duration of
    each model call). Each hook adds an event to the current span (the model call's span) and
    increments a low-cardinality counter. Get one from :attr:`Telemetry.listener
    <llm_server.core.opentelemetry_integration.Telemetry.listener>`. This base class is what a
    disabled telemetry hands out: every hook does nothing.
    """

    __slots__ = ()

    def on_state_change(self, breaker: Any, old: Any, new: Any) -> None:
        """A circuit breaker moved from state ``old`` to ``new``."""

    def on_call(self, breaker: Any, outcome: Any, duration_s: float) -> None:
        """A call went through (or was refused by) a circuit breaker (not recorded)."""

    def on_step(self, timing: StepTiming) -> None:
        """A pipeline step finished (steps have spans of their own: not recorded)."""

    def on_model_output(self, output: ModelOutput) -> None:
        """A model answered (recorded by the model-call span itself)."""

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """Attempt ``attempt`` of a call to ``model_id`` failed and is retried after ``delay_s``."""

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """A call to ``from_model_id`` failed (or was refused) and goes to ``to_model_id``."""

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """``model_id``'s circuit breaker refused a call."""


class RecordingListener(TelemetryListener):
    """The :class:`TelemetryListener` of an enabled telemetry."""

    __slots__ = ("_signals",)

    def __init__(self, signals: OtelSignals) -> None:
        self._signals = signals

    def on_state_change(self, breaker: Any, old: Any, new: Any) -> None:
        """A circuit breaker moved from state ``old`` to ``new``."""
        try:
            attrs = {
                n.BREAKER: breaker_name(breaker),
                n.BREAKER_FROM_STATE: state_name(old),
                n.BREAKER_TO_STATE: state_name(new),
                n.FLEET_DECISION: bool(getattr(breaker, "last_change_by_fleet", False)),
            }
        except Exception as exc:
            guarded("breaker transition", exc)
            return
        self._signals.event(n.EVENT_BREAKER_TRANSITION, attrs)
        self._signals.count(n.METRIC_BREAKER_TRANSITIONS, attrs)

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """``model_id``'s circuit breaker refused a call inside the model call: a span event.

        (The refusals counter reads the breakers' own counts when metrics are collected.)
        """
        self._signals.event(
            n.EVENT_BREAKER_REFUSED, {n.BREAKER: model_id, n.RETRY_AFTER_S: retry_after_s}
        )

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """Attempt ``attempt`` of a call to ``model_id`` failed and is retried after ``delay_s``."""
        signals = self._signals
        error_type = n.error_type(error)
        signals.event(
            n.EVENT_RETRY,
            {
                n.MODEL_ID: model_id,
                n.RETRY_ATTEMPT: attempt,
                n.RETRY_DELAY_S: delay_s,
                n.ERROR_TYPE: error_type,
            },
        )
        signals.count(n.METRIC_RETRIES, {n.MODEL_ID: model_id, n.ERROR_TYPE: error_type})

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """A call to ``from_model_id`` failed (or was refused) and goes to ``to_model_id``."""
        signals = self._signals
        attrs: dict[str, Any] = {
            n.FALLBACK_FROM: from_model_id,
            n.FALLBACK_TO: to_model_id,
            n.ERROR_TYPE: n.error_type(error),
        }
        signals.event(n.EVENT_FALLBACK, attrs)
        signals.count(n.METRIC_FALLBACKS, attrs)
