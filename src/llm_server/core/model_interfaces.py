"""Values a model backend returns: the output of one call and its token usage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["ModelOutput", "TokenCountMethod", "TokenUsage"]


class TokenCountMethod(StrEnum):
    """Where a token count came from.

    ``EXACT`` keeps the reference envelope's label ``"dspy_history_exact"`` for compatibility;
    it means the counts are the provider's own ``usage`` for this request, read through
    ``dspy.track_usage`` (never from DSPy's shared history).
    """

    EXACT = "dspy_history_exact"
    """The provider's reported usage for this request."""
    ESTIMATE = "tiktoken_estimate"
    """The provider reported no usage; counted offline with a tokenizer."""
    CUT_ESTIMATE = "cut_input_estimate"
    """The call was cut (request deadline, client gone) after it left for the provider: its
    input tokens are counted offline, its output is unknown (counted as 0)."""
    CACHED = "cache_hit"
    """Served from DSPy's cache: no tokens were billed."""
    UNAVAILABLE = "unavailable"
    """Nothing is known (no call was made, or counting failed)."""


@dataclass(frozen=True, slots=True)
class TokenUsage:
    """Token counts of one request (or the sum of several).

    Attributes:
        input_tokens: Prompt tokens.
        output_tokens: Completion tokens.
        total_tokens: ``input_tokens + output_tokens`` unless the provider said otherwise.
        method: How the counts were obtained.
        cached_input_tokens: Prompt tokens served from the provider's prompt cache, if reported.
    """

    input_tokens: int
    output_tokens: int
    total_tokens: int
    method: TokenCountMethod
    cached_input_tokens: int | None = None

    def __add__(self, other: TokenUsage) -> TokenUsage:
        """Sum two usages; the method is the weakest of the two (an estimate stays one)."""
        order = list(TokenCountMethod)
        method = max(self.method, other.method, key=order.index)
        cached: int | None
        if self.cached_input_tokens is None and other.cached_input_tokens is None:
            cached = None
        else:
            cached = (self.cached_input_tokens or 0) + (other.cached_input_tokens or 0)
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            total_tokens=self.total_tokens + other.total_tokens,
            method=method,
            cached_input_tokens=cached,
        )


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """The result of one :meth:`ModelBackend.predict` call.

    Attributes:
        content: The prediction (a ``dspy.Prediction`` for DSPy backends, or any value).
        model_id: The configured id of the model that answered (after any fallback).
        usage: Token usage of this request only, or ``None`` when unknown.
        cost_usd: Cost of this request in USD, or ``None`` when the price is unknown.
        response_model: The model name the provider reported, if any.
        finish_reasons: The provider's finish reasons, one per choice.
        latency_ms: Wall time of the call, including retries.
        attempts: HTTP attempts made (1 unless retried).
        metadata: Anything else a backend wants to report.
    """

    content: Any
    model_id: str
    usage: TokenUsage | None = None
    cost_usd: float | None = None
    response_model: str | None = None
    finish_reasons: tuple[str, ...] = ()
    latency_ms: float = 0.0
    attempts: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)
