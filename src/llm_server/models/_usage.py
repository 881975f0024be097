"""Turn one request's LM call records into a :class:`TokenUsage`, response model and finish reasons.

Three cases are kept apart, because mixing them up misreports cost:

* the provider reported usage: exact (``TokenCountMethod.EXACT``);
* the call reached the provider but usage was missing (lm15 reports ``{}``, LiteLLM zeros):
  counted offline with :mod:`llm_server.core.tokens` and labelled ``ESTIMATE``;
* every call was a DSPy cache hit: nothing billed, labelled ``CACHED``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
from llm_server.core.tokens import count_message_tokens, count_text_tokens

__all__ = ["CallSummary", "cut_usage", "finish_reasons", "output_text", "summarize_calls"]


@dataclass(frozen=True, slots=True)
class CallSummary:
    """What one request's LM calls amount to.

    Attributes:
        usage: Token usage of the request, or ``None`` when it made no LM call.
        response_model: The model name the provider reported on the last call.
        finish_reasons: Finish reasons of every choice of every call, in order.
        calls: LM calls made (cache hits included).
    """

    usage: TokenUsage | None
    response_model: str | None
    finish_reasons: tuple[str, ...]
    calls: int


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def is_reported(usage: Mapping[str, Any]) -> bool:
    """Whether a usage dict holds real counts (LiteLLM fills zeros when the provider sent none)."""
    return bool(_int(usage.get("prompt_tokens")) or _int(usage.get("completion_tokens")))


def _cached_tokens(usage: Mapping[str, Any]) -> int | None:
    details = usage.get("prompt_tokens_details")
    cached = _get(details, "cached_tokens") if details is not None else None
    if cached is None:
        cached = usage.get("cache_read_input_tokens")
    return cached if isinstance(cached, int) and not isinstance(cached, bool) else None


def _exact(usage: Mapping[str, Any]) -> TokenUsage:
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    total = _int(usage.get("total_tokens")) or prompt + completion
    return TokenUsage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=total,
        method=TokenCountMethod.EXACT,
        cached_input_tokens=_cached_tokens(usage),
    )


def output_text(outputs: Any) -> str:
    """The text of a call record's ``outputs`` (``""`` for none or null content)."""
    if not isinstance(outputs, list):
        return ""
    texts = []
    for output in outputs:
        text = output if isinstance(output, str) else _get(output, "text")
        if isinstance(text, str):
            texts.append(text)
    return "".join(texts)


def _estimate(entry: Mapping[str, Any], model_name: str) -> TokenUsage:
    messages = entry.get("messages")
    if not isinstance(messages, list):
        prompt = entry.get("prompt")
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else []
    prompt_tokens = count_message_tokens(
        [m for m in messages if isinstance(m, Mapping)], model_name
    )
    completion_tokens = count_text_tokens(output_text(entry.get("outputs")), model_name)
    return TokenUsage(
        input_tokens=prompt_tokens,
        output_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        method=TokenCountMethod.ESTIMATE,
    )


def finish_reasons(response: Any) -> list[str]:
    """The finish reasons of one call's response, on either engine."""
    reason = _get(response, "finish_reason")
    if reason is not None:
        return [str(getattr(reason, "value", reason))]
    choices = _get(response, "choices")
    reasons: list[str] = []
    if isinstance(choices, Sequence):
        for choice in choices:
            value = _get(choice, "finish_reason")
            if value is not None:
                reasons.append(str(getattr(value, "value", value)))
    return reasons


def summarize_calls(
    entries: Sequence[Mapping[str, Any]],
    billed: Sequence[Mapping[str, Any]],
    *,
    model_name: str,
) -> CallSummary:
    """Summarize one request.

    Args:
        entries: One record per LM call (cache hits included), in call order.
        billed: The usage of each call that reached the provider (possibly empty dicts).
        model_name: ``provider/model``, to pick the tokenizer for estimates.
    """
    if not entries and not billed:
        return CallSummary(usage=None, response_model=None, finish_reasons=(), calls=0)
    if len(entries) == 1 and len(billed) == 1 and is_reported(billed[0]):
        # The common case (one billed call that reported its usage), without the general
        # path's comprehensions: this runs on every request.
        entry = entries[0]
        model = entry.get("response_model")
        return CallSummary(
            usage=_exact(billed[0]),
            response_model=str(model) if model else None,
            finish_reasons=tuple(finish_reasons(entry.get("response"))),
            calls=1,
        )
    reasons = [reason for entry in entries for reason in finish_reasons(entry.get("response"))]
    response_model = next(
        (str(e["response_model"]) for e in reversed(entries) if e.get("response_model")), None
    )
    exact = [_exact(usage) for usage in billed if is_reported(usage)]
    missing = len(billed) - len(exact)
    usage: TokenUsage | None = None
    for item in exact:
        usage = item if usage is None else usage + item
    if missing:
        # Records without counts are cache hits or unreported calls; the tracker tells how many
        # are the latter. Estimate that many (they are alike in any realistic program).
        unreported = [e for e in entries if not is_reported(e.get("usage") or {})][:missing]
        for entry in unreported:
            estimate = _estimate(entry, model_name)
            usage = estimate if usage is None else usage + estimate
    if usage is None:
        # Every call was served from DSPy's cache: nothing was billed.
        usage = TokenUsage(0, 0, 0, TokenCountMethod.CACHED)
    return CallSummary(
        usage=usage,
        response_model=response_model,
        finish_reasons=tuple(reasons),
        calls=max(len(entries), len(billed)),
    )


def cut_usage(cut: Sequence[Sequence[Mapping[str, Any]]], *, model_name: str) -> TokenUsage:
    """The usage of calls cut after they left (a deadline, a client gone): what is known.

    The prompts were sent, and are billed; each is counted offline. The output is unknown
    (counted as 0) and the usage says so (``TokenCountMethod.CUT_ESTIMATE``).
    """
    prompt_tokens = sum(count_message_tokens(list(messages), model_name) for messages in cut)
    return TokenUsage(
        input_tokens=prompt_tokens,
        output_tokens=0,
        total_tokens=prompt_tokens,
        method=TokenCountMethod.CUT_ESTIMATE,
    )
