"""Listeners that turn breaker and reliability events into span events and counters (private).

Public as :class:`~llm_server.core.opentelemetry_integration.TelemetryListener`.
"""

from __future__ import annotations

from typing import Any

from llm_server.core import _otel_names as n
from llm_server.core._otel_signals import OtelSignals, breaker_name, guarded, state_name

__all__ = ["RecordingListener", "TelemetryListener"]


class TelemetryListener:
    """Records circuit-breaker, retry and fallback events in traces and metrics.

    It implements the hooks the reliability layer calls: the circuit breaker's listener
    protocol (:meth:`on_state_change`, :meth:`on_call`) and the retry and fallback hooks
    (:meth:`on_retry`, :meth:`on_fallback`). Each hook adds an event to the current span (the
    model call's span when the call is instrumented) and increments a low-cardinality counter.
    Get one from :meth:`Telemetry.listener
    <llm_server.core.opentelemetry_integration.Telemetry.listener>`. This base class is what a
    disabled telemetry hands out: every hook does nothing.
    """

    __slots__ = ()

    def on_state_change(self, breaker: Any, old: Any, new: Any) -> None:
        """A circuit breaker moved from state ``old`` to ``new``."""

    def on_call(self, breaker: Any, outcome: Any, duration_s: float) -> None:
        """A call went through (or was refused by) a circuit breaker; refusals are recorded."""

    def on_retry(
        self, model_id: str, attempt: int, error: BaseException | None, delay_s: float
    ) -> None:
        """Attempt ``attempt`` of a call to ``model_id`` failed and is retried after ``delay_s``."""

    def on_fallback(
        self, from_model_id: str, to_model_id: str, error: BaseException | None
    ) -> None:
        """A call to ``from_model_id`` failed (or was refused) and goes to ``to_model_id``."""


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
            }
        except Exception as exc:
            guarded("breaker transition", exc)
            return
        self._signals.event(n.EVENT_BREAKER_TRANSITION, attrs)
        self._signals.count(n.METRIC_BREAKER_TRANSITIONS, attrs)

    def on_call(self, breaker: Any, outcome: Any, duration_s: float) -> None:
        """A call went through (or was refused by) a circuit breaker; refusals are recorded."""
        try:
            if state_name(outcome) != "refused":
                return
            attrs = {n.BREAKER: breaker_name(breaker)}
        except Exception as exc:
            guarded("breaker call", exc)
            return
        signals = self._signals
        signals.count(n.METRIC_BREAKER_REFUSALS, attrs)
        event_attrs: dict[str, Any] = dict(attrs)
        retry_after = _retry_after(breaker)
        if retry_after is not None:
            event_attrs[n.RETRY_AFTER_S] = retry_after
        signals.event(n.EVENT_BREAKER_REFUSED, event_attrs)

    def on_retry(
        self, model_id: str, attempt: int, error: BaseException | None, delay_s: float
    ) -> None:
        """Attempt ``attempt`` of a call to ``model_id`` failed and is retried after ``delay_s``."""
        signals = self._signals
        error_type = n.error_type(error) if error is not None else "_OTHER"
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

    def on_fallback(
        self, from_model_id: str, to_model_id: str, error: BaseException | None
    ) -> None:
        """A call to ``from_model_id`` failed (or was refused) and goes to ``to_model_id``."""
        signals = self._signals
        attrs: dict[str, Any] = {n.FALLBACK_FROM: from_model_id, n.FALLBACK_TO: to_model_id}
        if error is not None:
            attrs[n.ERROR_TYPE] = n.error_type(error)
        signals.event(n.EVENT_FALLBACK, attrs)
        signals.count(n.METRIC_FALLBACKS, attrs)


def _retry_after(breaker: Any) -> float | None:
    """Seconds until the breaker's next probe, when it can tell (never raises)."""
    try:
        snapshot = getattr(breaker, "snapshot", None)
        value = snapshot().retry_after_s if callable(snapshot) else None
    except Exception:  # telemetry must not fail because a breaker changed shape
        return None
    return float(value) if isinstance(value, int | float) else None
