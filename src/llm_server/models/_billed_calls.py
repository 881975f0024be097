"""Calls that were billed but gave no answer: reported to the observers, never left out.

A failed attempt (a parse failure, a provider error, a deadline) may have made calls that
came back and were billed; a cancelled attempt may have cut calls after they left. Both are
reported as an output without content, so the envelope's tokens, the token and cost metrics
and the tenant's budget count them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.pricing import ModelPrice, cost_usd
from llm_server.core.telemetry._observation import notify_model_output
from llm_server.models._usage import cut_usage, summarize_calls

if TYPE_CHECKING:
    from llm_server.models._request_scope import RequestScope

__all__ = ["BilledCalls"]


@dataclass(frozen=True, slots=True)
class BilledCalls:
    """Reports one backend's billed calls of attempts that gave no answer."""

    model_id: str
    model_name: str
    price: ModelPrice | None
    program_version: str | None

    def failed(self, scope: RequestScope, started: float, outcome: str) -> None:
        """Report the calls of a failed attempt that came back: billed, so never left out.

        Their usage (exact, or estimated when the provider sent none) goes to the observers
        as an output without content whose ``metadata["outcome"]`` is the error type: the
        envelope's tokens, the token and cost metrics and the tenant's budget all count it.
        """
        summary = summarize_calls(scope.entries, scope.tracker.billed, model_name=self.model_name)
        usage = summary.usage
        if usage is None or summary.calls == 0:
            return  # nothing came back: nothing billed (cut calls are reported apart)
        metadata: dict[str, Any] = {"outcome": outcome, "lm_calls": summary.calls}
        if self.program_version is not None:
            metadata["program_version"] = self.program_version
        notify_model_output(
            ModelOutput(
                content=None,
                model_id=self.model_id,
                usage=usage,
                cost_usd=cost_usd(usage, self.price),
                response_model=summary.response_model,
                finish_reasons=summary.finish_reasons,
                latency_ms=(time.perf_counter() - started) * 1000,
                metadata=metadata,
            )
        )

    def cut(self, calls: list[list[dict[str, Any]]], started: float) -> None:
        """Report calls cut after they left to the observers: billed, so never left out.

        The prompts are counted offline and the output is unknown; the telemetry listener
        records them in the token and cost metrics and counts the cut calls.
        """
        if not calls:
            return  # cancelled before anything was sent: nothing was billed
        usage = cut_usage(calls, model_name=self.model_name)
        for messages in calls:
            messages.clear()  # accounted once
        notify_model_output(
            ModelOutput(
                content=None,
                model_id=self.model_id,
                usage=usage,
                cost_usd=cost_usd(usage, self.price),
                latency_ms=(time.perf_counter() - started) * 1000,
                metadata={"cut": True, "lm_calls": len(calls)},
            )
        )
