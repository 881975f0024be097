"""Translate DSPy, LiteLLM and httpx failures into llm-server's error hierarchy.

DSPy already folds both engines' failures into ``dspy.utils.exceptions.LM*Error`` with the
HTTP status and ``retry_after``, but the two engines differ in detail (a timeout is
``LMTransportError`` on lm15 and ``LMTimeoutError`` on LiteLLM; connection refused is
``LMServerError`` on LiteLLM and ``LMTransportError`` on lm15). This module looks at the class,
the status and the cause chain, so each failure maps to one of our types whichever engine
raised it. The original is kept as ``__cause__`` by the caller (``raise ... from exc``), and
messages go through :func:`llm_server.core.telemetry.redact` (the manager registers every
configured key), so they never carry an API key.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from llm_server.core.errors import (
    ContextWindowExceededError,
    LLMServerError,
    ModelCallError,
    ModelTimeoutError,
    OutputParseError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from llm_server.core.telemetry._redaction import redact

__all__ = ["translate_error"]

_MAX_MESSAGE = 500


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _class_names(exc: BaseException) -> set[str]:
    return {cls.__name__ for cls in type(exc).__mro__}


def _status(exc: BaseException) -> int | None:
    for item in _chain(exc):
        for candidate in (
            getattr(item, "status", None),
            getattr(item, "status_code", None),
            getattr(getattr(item, "response", None), "status_code", None),
        ):
            if isinstance(candidate, bool) or not isinstance(candidate, int):
                continue
            if 100 <= candidate <= 599:
                return candidate
    return None


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError, OverflowError):
        seconds = math.nan
    if math.isfinite(seconds):
        return max(seconds, 0.0)
    if isinstance(value, str):
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max((when - datetime.now(UTC)).total_seconds(), 0.0)
    return None


def _header(headers: Any, name: str) -> Any:
    if headers is None:
        return None
    try:
        items = headers.items()
    except AttributeError:
        return None
    return next((value for key, value in items if str(key).lower() == name), None)


def _retry_after(exc: BaseException) -> float | None:
    for item in _chain(exc):
        hint = _seconds(getattr(item, "retry_after", None))
        if hint is not None:
            return hint
        for headers in (
            getattr(getattr(item, "response", None), "headers", None),
            getattr(item, "headers", None),
        ):
            hint = _seconds(_header(headers, "retry-after"))
            if hint is not None:
                return hint
    return None


def _is_timeout(exc: BaseException) -> bool:
    timeout_names = {"TimeoutException", "Timeout", "LMTimeoutError", "ReadTimeout"}
    return any(
        isinstance(item, TimeoutError) or _class_names(item) & timeout_names for item in _chain(exc)
    )


def _is_model_failure(exc: BaseException) -> bool:
    """Whether ``exc`` comes from a model call at all (not a bug in the user's program)."""
    names = {"DSPyError", "HTTPError", "APIError", "OpenAIError", "AnthropicError"}
    return bool(
        isinstance(exc, TimeoutError | ConnectionError)
        or _class_names(exc) & names
        or type(exc).__module__.split(".")[0] in {"litellm", "httpx", "openai"}
    )


_EXACT_STATUS: dict[int, type[ModelCallError]] = {
    408: ModelTimeoutError,
    413: ContextWindowExceededError,
    429: RateLimitedError,
    401: ProviderAuthError,
    402: ProviderAuthError,
    403: ProviderAuthError,
}


def _by_status(status: int) -> type[ModelCallError] | None:
    if status in _EXACT_STATUS:
        return _EXACT_STATUS[status]
    if 400 <= status < 500:
        return ProviderBadRequestError
    return ProviderUnavailableError if status >= 500 else None


# Class names (DSPy's, lm15's, LiteLLM's and the SDKs') that decide the mapping by themselves,
# most specific first.
_BY_NAME: tuple[tuple[frozenset[str], type[ModelCallError]], ...] = (
    (frozenset({"AdapterParseError"}), OutputParseError),
    (frozenset({"ContextWindowExceededError", "ContextLengthError"}), ContextWindowExceededError),
    (frozenset({"LMRateLimitError", "RateLimitError"}), RateLimitedError),
    (frozenset({"LMAuthError", "LMBillingError", "LMNotConfiguredError"}), ProviderAuthError),
    (
        frozenset({"LMInvalidRequestError", "LMUnsupportedFeatureError", "LMConfigurationError"}),
        ProviderBadRequestError,
    ),
)


def _classify(exc: BaseException) -> type[ModelCallError] | None:
    if not _is_model_failure(exc):
        return None  # a bug in the program (KeyError, ...), not a model-call failure
    names = _class_names(exc)
    named = next((target for keys, target in _BY_NAME if names & keys), None)
    if named is not None:
        return named
    if _is_timeout(exc):
        return ModelTimeoutError
    status = _status(exc)
    mapped = _by_status(status) if status is not None else None
    if mapped is not None:
        return mapped
    # 5xx without a status, refused/reset connections, unparseable bodies, anything else the
    # provider side raised: trying again may work.
    return ProviderUnavailableError


_SUMMARY: dict[type[ModelCallError], str] = {
    RateLimitedError: "rate limited by the provider",
    ModelTimeoutError: "the provider did not answer in time",
    ProviderUnavailableError: "the provider is unavailable",
    ProviderAuthError: "the provider rejected the credentials",
    ProviderBadRequestError: "the provider rejected the request",
    ContextWindowExceededError: "the prompt does not fit the model's context window",
    OutputParseError: "the model's answer could not be parsed into the output fields",
}


def translate_error(exc: BaseException, *, model_id: str) -> LLMServerError | None:
    """Our error for ``exc``, or ``None`` when ``exc`` is not a model-call failure.

    Args:
        exc: What the model call raised.
        model_id: The configured model id, set on the returned error.

    Returns:
        A :class:`~llm_server.core.errors.ModelCallError` subclass instance (or ``exc`` itself
        when it is already one of ours), or ``None`` for anything else (a bug in the program,
        cancellation), which the caller should let propagate unchanged.
    """
    if isinstance(exc, LLMServerError):
        if isinstance(exc, ModelCallError) and exc.model_id is None:
            exc.model_id = model_id
        return exc
    if not isinstance(exc, Exception):
        return None
    error_class = _classify(exc)
    if error_class is None:
        return None
    if error_class is OutputParseError:  # its text quotes the model's answer: not repeated
        # (the backend tells the kinds apart with models._answers; this is the fallback)
        return OutputParseError(f"model {model_id!r}: {_SUMMARY[error_class]}", model_id=model_id)
    detail = " ".join(redact(str(exc) or type(exc).__name__).split())
    if len(detail) > _MAX_MESSAGE:
        detail = detail[:_MAX_MESSAGE] + "..."
    message = f"model {model_id!r}: {_SUMMARY[error_class]} ({type(exc).__name__}: {detail})"
    if error_class is RateLimitedError:
        return RateLimitedError(message, model_id=model_id, retry_after_s=_retry_after(exc))
    return error_class(message, model_id=model_id)
