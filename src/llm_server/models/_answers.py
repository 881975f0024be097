"""Tell apart the answers DSPy cannot parse: cut, empty, refused, or unparseable (private).

DSPy raises one ``AdapterParseError`` for all of them. The call's own record (the last entry
of the request scope: the provider's response, its finish reason, its text) says which it
was, on either engine: lm15 keeps a refusal as a ``RefusalPart`` of the message, LiteLLM as
``choices[0].message.refusal``. The message names the fields that were missing or invalid;
the model's raw answer is added only when content capture is on (it may hold anything the
model was given).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from llm_server.core.errors import (
    EmptyOutputError,
    ModelRefusedError,
    OutputParseError,
    OutputTruncatedError,
)
from llm_server.core.model_config import ParsePolicy
from llm_server.core.telemetry._redaction import redact
from llm_server.models._usage import finish_reasons, output_text

__all__ = [
    "AnswerAttempts",
    "NextAttempt",
    "answer_error",
    "cut_answer_error",
    "is_parse_failure",
    "refusal_text",
]

_TRUNCATED: Final = frozenset({"length", "max_tokens", "model_length_limit"})
_REFUSED: Final = frozenset({"refusal", "content_filter", "safety"})
_BAD_FIELD: Final = re.compile(r"Failed to parse field (\w+)")
_SHOWN_ANSWER: Final = 500


def is_parse_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is DSPy's "the answer did not parse" (not a provider failure)."""
    return any(cls.__name__ == "AdapterParseError" for cls in type(exc).__mro__)


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def refusal_text(response: Any) -> str | None:
    """The provider's refusal in one call's response, on either engine (``None``: none)."""
    message = _get(response, "message")
    for part in _get(message, "parts") or ():  # lm15: a RefusalPart of the message
        if _get(part, "type") == "refusal":
            return str(_get(part, "text") or "")
    for choice in _get(response, "choices") or ():  # LiteLLM / OpenAI shape
        refusal = _get(_get(choice, "message"), "refusal")
        if refusal:
            return str(refusal)
    return None


def _fields(exc: BaseException) -> tuple[str, ...]:
    """The output fields the answer lacked or got wrong, by name."""
    named = _BAD_FIELD.search(str(exc))
    if named is not None:
        return (named.group(1),)
    signature = getattr(exc, "signature", None)
    expected = list(getattr(signature, "output_fields", {}) or {})
    parsed = getattr(exc, "parsed_result", None)
    got = set(parsed) if isinstance(parsed, Mapping) else set()
    return tuple(name for name in expected if name not in got)


def answer_error(
    exc: BaseException,
    entries: Sequence[Mapping[str, Any]],
    *,
    model_id: str,
    max_tokens: int | None,
    show_answer: bool,
    content_max_length: int = _SHOWN_ANSWER,
    streamed_refusal: str | None = None,
) -> OutputParseError:
    """Our error for DSPy's parse failure ``exc``, from the failed call's record.

    Args:
        exc: DSPy's ``AdapterParseError``.
        entries: The request's call records, the failed call last.
        model_id: The configured model id.
        max_tokens: The model's ``max_tokens`` in force for the call.
        show_answer: Whether the raw answer may be quoted (content capture is on).
        content_max_length: At most this many characters of it.
        streamed_refusal: The refusal the failed call's stream carried (a streamed answer's
            record has none: :mod:`._refusals`).
    """
    entry = entries[-1] if entries else {}
    response = entry.get("response")
    reasons = set(finish_reasons(response))
    text = output_text(entry.get("outputs"))
    fields = _fields(exc)
    named = ", ".join(fields) if fields else "(none named)"
    prefix = f"model {model_id!r}:"
    refusal = refusal_text(response) or streamed_refusal
    if refusal is not None or reasons & _REFUSED:
        said = " ".join(redact(refusal or "").split())
        return ModelRefusedError(
            f"{prefix} the model declined to answer: {said or '(no refusal text)'}",
            model_id=model_id,
            fields=fields,
            refusal=said,
        )
    if reasons & _TRUNCATED:
        limit = f"max_tokens={max_tokens:,}" if max_tokens else "its max_tokens"
        return OutputTruncatedError(
            f"{prefix} the answer was cut at {limit} before every output field was written "
            f"(incomplete: {named}); raise the model's max_tokens or set parse_policy."
            "truncation_max_tokens",
            model_id=model_id,
            fields=fields,
            max_tokens=max_tokens,
        )
    if not text.strip():
        return EmptyOutputError(
            f"{prefix} the model answered with empty content (expected: {named})",
            model_id=model_id,
            fields=fields,
        )
    invalid = _BAD_FIELD.search(str(exc)) is not None
    what = "could not be read" if invalid else "were missing"
    message = f"{prefix} the model's answer could not be parsed: output fields {what}: {named}"
    if show_answer:
        shown = " ".join(redact(text).split())[:content_max_length]
        message += f" (answer: {shown})"
    return OutputParseError(message, model_id=model_id, fields=fields)


def cut_answer_error(
    entries: Sequence[Mapping[str, Any]], *, model_id: str, max_tokens: int | None
) -> OutputTruncatedError | None:
    """The error for an answer DSPy parsed although a call of it was cut (``None``: none was).

    A call that stopped at ``max_tokens`` (``finish_reason: "length"``) left its last field
    unfinished even when every field marker was written: a one-field answer cut mid-sentence
    parses. It is rejected like a cut answer that does not parse (the parse policy's
    truncation re-ask may then ask again with a larger ``max_tokens``), never served as if
    it were whole.
    """
    if not any(_TRUNCATED.intersection(finish_reasons(entry.get("response"))) for entry in entries):
        return None
    limit = f"max_tokens={max_tokens:,}" if max_tokens else "its max_tokens"
    return OutputTruncatedError(
        f"model {model_id!r}: the answer was cut at {limit}: it parsed, but its last output "
        "field is incomplete; raise the model's max_tokens or set "
        "parse_policy.truncation_max_tokens",
        model_id=model_id,
        max_tokens=max_tokens,
    )


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """How to ask again after a rejected answer.

    Attributes:
        adapter: The adapter of the next attempt (``None``: the backend's own).
        max_tokens: Its ``max_tokens`` (``None``: the model's).
        why: ``"json_fallback"``, ``"reask"`` or ``"truncation"`` (for the log line).
    """

    adapter: str | None
    max_tokens: int | None
    why: str


@dataclass(slots=True)
class AnswerAttempts:
    """The re-asks of one call, by the parse policy: what was tried and what is left."""

    policy: ParsePolicy
    adapter: str | None
    max_tokens: int
    reasks_used: int = 0
    json_tried: bool = False
    raised: int | None = None
    failures: dict[str, int] = field(default_factory=dict)

    def next(self, error: OutputParseError) -> NextAttempt | None:
        """The attempt to make after ``error`` (counted), or ``None`` when the policy is done."""
        self.failures[error.error_type] = self.failures.get(error.error_type, 0) + 1
        policy = self.policy
        if isinstance(error, ModelRefusedError):
            return None  # the model's decision: asking again is not a fix
        if isinstance(error, OutputTruncatedError):
            cap = policy.truncation_max_tokens
            if cap is None or self.max_tokens >= cap:
                return None
            self.max_tokens = self.raised = min(cap, self.max_tokens * 2)
            return NextAttempt(self.adapter, self.raised, "truncation")
        if policy.json_fallback and not self.json_tried and self.adapter != "json":
            self.json_tried = True
            self.adapter = "json"
            return NextAttempt("json", self.raised, "json_fallback")
        if self.reasks_used < policy.reasks:
            self.reasks_used += 1
            return NextAttempt(self.adapter, self.raised, "reask")
        return None
