"""The one exception hierarchy of llm-server.

Every error the library raises on purpose derives from :class:`LLMServerError`. Errors from
DSPy, LiteLLM, httpx or Pillow are translated at the boundary where they enter, with the
original exception kept as ``__cause__``; user code catches our types, never theirs.

Each class carries a stable ``error_type`` string (used in the HTTP error envelope) and the
HTTP status a host app should answer with (``http_status``)::

    LLMServerError                          500 internal_error
    ├── ConfigurationError                  500 configuration_error
    │   └── MissingAPIKeyError              500 missing_api_key
    ├── PipelineValidationError             500 pipeline_invalid
    ├── PipelineError                       500 pipeline_error
    │   ├── MediaTypeMismatchError          422 media_type_mismatch
    │   └── StepError                       500 step_failed
    ├── InputError                          400 bad_input
    │   ├── PayloadTooLargeError            413 payload_too_large
    │   ├── UnsupportedMediaError           415 unsupported_media
    │   ├── UndecodableInputError           422 undecodable_input
    │   └── DataValidationError             422 validation_failed
    ├── ModelNotFoundError                  404 model_not_found
    ├── ProgramError                        500 program_error
    │   ├── ProgramNotFoundError            404 program_not_found
    │   ├── ExecutionNotFoundError          404 execution_not_found
    │   ├── ProgramAlreadyRegisteredError   409 program_conflict
    │   └── StorageError                    500 storage_error
    │       ├── InvalidIdentifierError      400 invalid_identifier
    │       ├── VersionExistsError          409 version_exists
    │       └── CorruptProgramError         500 corrupt_program
    ├── ModelCallError                      502 provider_error
    │   ├── RateLimitedError                429 rate_limited
    │   │   ├── RateLimitExceededError      429 rate_limited (our own limit; never sent)
    │   │   └── BudgetExceededError         429 budget_exceeded
    │   ├── ModelTimeoutError               504 model_timeout
    │   ├── ProviderUnavailableError        502 provider_unavailable
    │   ├── ProviderAuthError               502 provider_auth
    │   ├── ProviderBadRequestError         502 provider_bad_request
    │   │   └── ContextWindowExceededError  413 context_window_exceeded
    │   └── OutputParseError                502 unparseable_output
    │       ├── OutputTruncatedError        502 output_truncated
    │       ├── EmptyOutputError            502 empty_output
    │       └── ModelRefusedError           422 model_refused
    ├── CircuitOpenError                    503 circuit_open
    └── DeadlineExceededError               504 deadline_exceeded

Messages never contain API keys: anything that may carry one goes through
:func:`llm_server.core.telemetry.redact` before it becomes part of a message. Neither do
exception chains: where a dependency's exception is translated into one of ours, its
``__cause__`` is a :class:`RedactedCause` (the original's type, HTTP status and redacted
message, without its traceback or its own chain, where a provider's error body quoting the
key could hide), and nothing is chained as ``__context__``, so a traceback printed or sent to
an error tracker without the library's log filter still shows no key.

What a request was billed before it failed travels with the error: the HTTP layer sets
:attr:`LLMServerError.request_usage` (the error envelope's ``usage``), so a client and an
operator see the tokens and cost of every call that came back, whatever the outcome.
"""

from __future__ import annotations

from typing import Any, ClassVar

from llm_server.core.telemetry._redaction import redact

__all__ = [
    "BudgetExceededError",
    "CircuitOpenError",
    "ConfigurationError",
    "ContextWindowExceededError",
    "CorruptProgramError",
    "DataValidationError",
    "DeadlineExceededError",
    "EmptyOutputError",
    "ExecutionNotFoundError",
    "InputError",
    "InvalidIdentifierError",
    "LLMServerError",
    "MediaTypeMismatchError",
    "MissingAPIKeyError",
    "ModelCallError",
    "ModelNotFoundError",
    "ModelRefusedError",
    "ModelTimeoutError",
    "OutputParseError",
    "OutputTruncatedError",
    "PayloadTooLargeError",
    "PipelineError",
    "PipelineValidationError",
    "ProgramAlreadyRegisteredError",
    "ProgramError",
    "ProgramNotFoundError",
    "ProviderAuthError",
    "ProviderBadRequestError",
    "ProviderUnavailableError",
    "RateLimitExceededError",
    "RateLimitedError",
    "RedactedCause",
    "StepError",
    "StorageError",
    "StreamInterruptedError",
    "UndecodableInputError",
    "UnsupportedMediaError",
    "VersionExistsError",
]


class LLMServerError(Exception):
    """Root of every error raised by llm-server on purpose."""

    error_type: ClassVar[str] = "internal_error"
    http_status: ClassVar[int] = 500
    request_usage: dict[str, Any] | None = None
    """What the request was billed before this error (tokens by call, cost, method), or
    ``None`` when nothing was billed; set by the HTTP layer, sent as the envelope's ``usage``."""

    @property
    def message(self) -> str:
        """The human-readable message (the first argument)."""
        return str(self.args[0]) if self.args else self.__class__.__name__


# --- configuration -------------------------------------------------------------------------


class ConfigurationError(LLMServerError):
    """Settings, environment or YAML model configuration is invalid.

    The message names the file (or environment variable), the model id and the key.
    """

    error_type = "configuration_error"


class MissingAPIKeyError(ConfigurationError):
    """A model's provider key is not set; the message names the environment variable."""

    error_type = "missing_api_key"

    def __init__(self, message: str, *, model_id: str, env_var: str | None) -> None:
        super().__init__(message)
        self.model_id = model_id
        self.env_var = env_var


# --- pipelines -------------------------------------------------------------------------------


class PipelineValidationError(LLMServerError):
    """A pipeline was built wrongly (empty, a non-step, or mismatched adjacent media types)."""

    error_type = "pipeline_invalid"


class PipelineError(LLMServerError):
    """A pipeline failed while executing."""

    error_type = "pipeline_error"

    def __init__(self, message: str, *, step: str | None = None) -> None:
        super().__init__(message)
        self.step = step


class MediaTypeMismatchError(PipelineError):
    """Data reached a step that does not accept its media type."""

    error_type = "media_type_mismatch"
    http_status = 422


class StepError(PipelineError):
    """An unexpected exception inside a step; the original is ``__cause__``."""

    error_type = "step_failed"


# --- bad input from the caller -----------------------------------------------------------------


class InputError(LLMServerError):
    """The caller's input is unusable; hosts answer with a 4xx."""

    error_type = "bad_input"
    http_status = 400


class PayloadTooLargeError(InputError):
    """Input exceeds a configured limit (bytes, pixels, ...)."""

    error_type = "payload_too_large"
    http_status = 413


class UnsupportedMediaError(InputError):
    """Input is of a format that is not allowed."""

    error_type = "unsupported_media"
    http_status = 415


class UndecodableInputError(InputError):
    """Input is truncated, corrupt or otherwise cannot be decoded."""

    error_type = "undecodable_input"
    http_status = 422


class DataValidationError(InputError):
    """Structured data failed validation; ``errors`` lists each failing field."""

    error_type = "validation_failed"
    http_status = 422

    def __init__(self, message: str, *, errors: list[dict[str, object]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


# --- models and programs ---------------------------------------------------------------------


class ModelNotFoundError(LLMServerError):
    """An unknown model id was asked for; the message lists the known ids."""

    error_type = "model_not_found"
    http_status = 404

    def __init__(self, model_id: str, known: list[str]) -> None:
        known_text = ", ".join(sorted(known)) or "(none configured)"
        super().__init__(f"unknown model id {model_id!r}; known model ids: {known_text}")
        self.model_id = model_id
        self.known = sorted(known)


class ProgramError(LLMServerError):
    """A program could not be registered, saved or loaded."""

    error_type = "program_error"


class ProgramNotFoundError(ProgramError):
    """An unknown program id or version was asked for."""

    error_type = "program_not_found"
    http_status = 404


class ExecutionNotFoundError(ProgramError):
    """Feedback named an execution id that is unknown, of another program, or past retention."""

    error_type = "execution_not_found"
    http_status = 404


class ProgramAlreadyRegisteredError(ProgramError):
    """Two different programs were registered under one id."""

    error_type = "program_conflict"
    http_status = 409


class StorageError(ProgramError):
    """Program storage failed."""

    error_type = "storage_error"


class InvalidIdentifierError(StorageError):
    """A program id or version is not a safe name (path traversal, NUL, too long, ...)."""

    error_type = "invalid_identifier"
    http_status = 400


class VersionExistsError(StorageError):
    """A version that already exists would have been overwritten."""

    error_type = "version_exists"
    http_status = 409


class CorruptProgramError(StorageError):
    """A stored program is truncated, tampered with or for another class; names the file."""

    error_type = "corrupt_program"


# --- model calls -----------------------------------------------------------------------------


class ModelCallError(LLMServerError):
    """A call to a model provider failed.

    Attributes:
        model_id: The configured model id the call was for.
        retryable: Whether trying again may succeed.
    """

    error_type = "provider_error"
    http_status = 502
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        super().__init__(message)
        self.model_id = model_id


class RateLimitedError(ModelCallError):
    """The provider answered 429; ``retry_after_s`` is its Retry-After, if it sent one."""

    error_type = "rate_limited"
    http_status = 429
    retryable = True

    def __init__(
        self, message: str, *, model_id: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message, model_id=model_id)
        self.retry_after_s = retry_after_s


class RateLimitExceededError(RateLimitedError):
    """A model's own ``rate_limit:`` had no capacity in time; the call never left.

    Not retried (the limiter already waited as long as allowed), not counted by the breaker;
    a fallback model is tried when one is configured.

    Attributes:
        limit: The limit that refused (``"requests_per_minute"`` or ``"tokens_per_minute"``).
        fleet: Whether the decision was the fleet's (Redis) or this process's alone.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        retry_after_s: float | None = None,
        limit: str,
        fleet: bool,
    ) -> None:
        super().__init__(message, model_id=model_id, retry_after_s=retry_after_s)
        self.limit = limit
        self.fleet = fleet


class BudgetExceededError(RateLimitedError):
    """A tenant spent its budget for the period (requests, tokens or cost); nothing was sent.

    Attributes:
        tenant: The tenant id.
        limit: What ran out (``"cost_usd_per_day"``, ``"tokens_per_month"``...).
        fleet: Whether the decision was on the fleet's usage (Redis) or this process's.
    """

    error_type = "budget_exceeded"
    retryable = False

    def __init__(
        self,
        message: str,
        *,
        tenant: str,
        limit: str,
        retry_after_s: float | None = None,
        fleet: bool,
    ) -> None:
        super().__init__(message, retry_after_s=retry_after_s)
        self.tenant = tenant
        self.limit = limit
        self.fleet = fleet


class ModelTimeoutError(ModelCallError):
    """The provider did not answer within the model's timeout."""

    error_type = "model_timeout"
    http_status = 504
    retryable = True


class ProviderUnavailableError(ModelCallError):
    """The provider failed (5xx), refused or reset the connection."""

    error_type = "provider_unavailable"
    retryable = True


class ProviderAuthError(ModelCallError):
    """The provider rejected the credentials (401/403)."""

    error_type = "provider_auth"


class ProviderBadRequestError(ModelCallError):
    """The provider rejected the request as invalid (400/404/422)."""

    error_type = "provider_bad_request"


class ContextWindowExceededError(ProviderBadRequestError):
    """The prompt does not fit the model's context window."""

    error_type = "context_window_exceeded"
    http_status = 413


class StreamInterruptedError(ModelCallError):
    """A streamed call failed after its first piece was sent: it is never retried (the client
    has part of an answer) and ends the stream with an ``error`` event."""

    error_type = "stream_interrupted"


class OutputParseError(ModelCallError):
    """The model answered, but its output could not be parsed into the signature's fields.

    Not retried, and not counted by the circuit breaker (the provider answered). A model's or
    program's ``parse_policy`` may ask again. The message names the fields that were missing
    or invalid; the model's raw answer is in it only when message content capture is on
    (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``).

    Attributes:
        fields: The output fields that were missing or could not be read, by name.
    """

    error_type = "unparseable_output"

    def __init__(
        self, message: str, *, model_id: str | None = None, fields: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, model_id=model_id)
        self.fields = fields


class OutputTruncatedError(OutputParseError):
    """The answer was cut at the model's ``max_tokens`` (``finish_reason: "length"``).

    Raise the model's ``max_tokens`` (YAML), or let its ``parse_policy`` re-ask with a larger
    one (``truncation_max_tokens``).

    Attributes:
        max_tokens: The ``max_tokens`` in force for the call, when known.
    """

    error_type = "output_truncated"

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        fields: tuple[str, ...] = (),
        max_tokens: int | None = None,
    ) -> None:
        super().__init__(message, model_id=model_id, fields=fields)
        self.max_tokens = max_tokens


class EmptyOutputError(OutputParseError):
    """The model answered with empty (or null) content and no refusal."""

    error_type = "empty_output"


class ModelRefusedError(OutputParseError):
    """The model declined to answer (an OpenAI ``refusal``, an Anthropic ``refusal`` stop).

    Answered with 422: the request was understood and the model will not answer it as asked.
    The refusal text is the model's message to the user, so it is part of the message.

    Attributes:
        refusal: The provider's refusal text (redacted), ``""`` when it sent none.
    """

    error_type = "model_refused"
    http_status = 422

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        fields: tuple[str, ...] = (),
        refusal: str = "",
    ) -> None:
        super().__init__(message, model_id=model_id, fields=fields)
        self.refusal = refusal


# --- reliability -------------------------------------------------------------------------------


class CircuitOpenError(LLMServerError):
    """A circuit breaker refused the call.

    Attributes:
        breaker: The breaker's name (the model id for model breakers).
        retry_after_s: Seconds until the breaker lets the next probe through.
    """

    error_type = "circuit_open"
    http_status = 503

    def __init__(self, breaker: str, retry_after_s: float) -> None:
        super().__init__(f"circuit breaker {breaker!r} is open; next probe in {retry_after_s:.1f}s")
        self.breaker = breaker
        self.retry_after_s = retry_after_s


class DeadlineExceededError(LLMServerError):
    """The overall request deadline passed before a model answered."""

    error_type = "deadline_exceeded"
    http_status = 504

    def __init__(self, message: str, *, deadline_s: float | None = None) -> None:
        super().__init__(message)
        self.deadline_s = deadline_s


class RedactedCause(Exception):  # noqa: N818 -- a cause, not an error to catch
    """What a dependency's exception leaves behind as the ``__cause__`` of one of ours.

    Its message is the original's type, its HTTP status when it had one, and its redacted
    message; the original, its traceback and its own chain (a provider SDK's exception may
    hold the request, headers included) are not kept.

    Attributes:
        type_name: The original exception's qualified type name.
        status_code: Its HTTP status, if it had one.
    """

    def __init__(self, original: BaseException) -> None:
        kind = type(original)
        self.type_name = f"{kind.__module__}.{kind.__qualname__}"
        status = getattr(original, "status_code", None)
        self.status_code = status if isinstance(status, int) else None
        shown = f" (HTTP {self.status_code})" if self.status_code is not None else ""
        super().__init__(f"{self.type_name}{shown}: {redact(str(original))}")
