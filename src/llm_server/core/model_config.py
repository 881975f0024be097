"""The schema of the YAML model configuration (validated with pydantic, strictly).

Unknown keys are errors, so a typo never silently falls back to a default. The configuration
reference of the documentation documents every key.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "BreakerConfig",
    "BudgetConfig",
    "BudgetLimitsConfig",
    "CaptureConfig",
    "ModelConfig",
    "ModelsConfig",
    "ParsePolicy",
    "PricingConfig",
    "RateLimitConfig",
    "RetryConfig",
    "SharedCacheConfig",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PricingConfig(_Strict):
    """Per-model price override in USD per million tokens (for models LiteLLM does not know)."""

    input_per_million: float = Field(ge=0, allow_inf_nan=False)
    output_per_million: float = Field(ge=0, allow_inf_nan=False)
    cached_input_per_million: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class BreakerConfig(_Strict):
    """Per-model circuit breaker overrides; unset keys use the settings' defaults."""

    failure_threshold: int | None = Field(default=None, ge=1)
    reset_timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    half_open_max_calls: int | None = Field(default=None, ge=1)
    failure_rate_threshold: float | None = Field(default=None, gt=0, le=1)
    window_size: int | None = Field(default=None, ge=1)
    window_type: Literal["count", "time"] | None = None
    minimum_calls: int | None = Field(default=None, ge=1)
    slow_call_duration_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    slow_call_rate_threshold: float | None = Field(default=None, gt=0, le=1)


class RetryConfig(_Strict):
    """Per-model retry overrides; unset keys use the settings' defaults."""

    max_attempts: int | None = Field(default=None, ge=1, le=20)
    initial_backoff_s: float | None = Field(default=None, ge=0)
    max_backoff_s: float | None = Field(default=None, ge=0)
    retry_after_cap_s: float | None = Field(default=None, ge=0)


class RateLimitConfig(_Strict):
    """A model's request and token limits (per process, or fleet-wide with Redis)."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    """Calls per minute that may reach the provider."""
    tokens_per_minute: int | None = Field(default=None, ge=1)
    """Tokens per minute (prompt + ``max_tokens`` reserved before a call, settled after it)."""
    max_wait_s: float = Field(default=0.0, ge=0)
    """How long a call may wait for capacity (never past the request deadline)."""

    @model_validator(mode="after")
    def _some_limit(self) -> RateLimitConfig:
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            raise ValueError("give requests_per_minute, tokens_per_minute or both")
        return self


MAX_CACHE_TTL_S = 100 * 365 * 86_400
"""The longest a shared cache keeps an answer: 100 years, well inside what Redis stores (a
64-bit count of milliseconds, ~292,000 years, past which it refuses every write)."""


class SharedCacheConfig(_Strict):
    """A model's shared, tenant-safe response cache in Redis."""

    ttl_s: float = Field(default=3600.0, gt=0, le=MAX_CACHE_TTL_S, allow_inf_nan=False)
    """How long an answer is kept (at most 100 years)."""
    max_entry_bytes: int = Field(default=262_144, gt=0)
    """Answers larger than this are not cached."""


class BudgetLimitsConfig(_Strict):
    """What a tenant may use in one period; unset keys do not limit."""

    requests: int | None = Field(default=None, ge=1)
    """Model calls."""
    tokens: int | None = Field(default=None, ge=1)
    """Tokens, prompt plus completion, as reported."""
    cost_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    """Cost in USD."""


class BudgetConfig(_Strict):
    """A tenant's budgets per UTC day and month."""

    per_day: BudgetLimitsConfig | None = None
    per_month: BudgetLimitsConfig | None = None

    @model_validator(mode="after")
    def _some_period(self) -> BudgetConfig:
        if self.per_day is None and self.per_month is None:
            raise ValueError("give per_day, per_month or both")
        return self


class CaptureConfig(_Strict):
    """Traffic capture of one program (the ``capture:`` section, keyed by program id).

    The same options as :class:`~llm_server.traffic.CaptureOptions` that a file can hold; a
    redaction hook and an online evaluation are Python objects, given at registration. A
    program registered with ``capture=`` uses those options, not these.
    """

    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of requests captured in full, 0 to 1."""
    retention_days: float = Field(default=30.0, gt=0, allow_inf_nan=False)
    """Days a record is kept."""
    redact_fields: list[str] = Field(default_factory=list)
    """Input or output field names whose values are stored as ``[REDACTED]``."""

    @field_validator("redact_fields")
    @classmethod
    def _named(cls, fields: list[str]) -> list[str]:
        if any(not name.strip() for name in fields):
            raise ValueError("field names must not be empty")
        return fields


class ParsePolicy(_Strict):
    """What to do when a model's answer cannot be read into the output fields.

    The default asks nothing more: a failed answer is reported at once with its kind
    (``unparseable_output``, ``empty_output``, ``output_truncated``, ``model_refused``) and
    its billed tokens, and the cost of a request never doubles without the operator asking for
    it. Every extra attempt is a billed call: it is logged, counted in
    ``llm_server.client.parse_failures``, added to the envelope's tokens and listed by kind in
    its ``answer_attempts``. A refusal is never asked again (it is the model's decision), a
    stream whose first piece went out is never asked again, no attempt starts past the request
    deadline (it cuts the call), and none starts while the model's circuit breaker would
    refuse it; parse failures never count against the breaker. An attempt runs the whole
    program again (every predictor of a multi-step program).

    Attributes:
        reasks: How many times to ask the same question again after an unparseable or empty
            answer.
        json_fallback: After an unparseable or empty answer from the chat or XML adapter, ask
            once with DSPy's JSON adapter first (an attempt of its own, before any re-ask).
        truncation_max_tokens: After an answer cut at ``max_tokens``, ask again with twice the
            ``max_tokens``, up to this cap (``None``: never; must exceed the model's
            ``max_tokens``).
    """

    reasks: int = Field(default=0, ge=0, le=5)
    json_fallback: bool = False
    truncation_max_tokens: int | None = Field(default=None, gt=0)


class ModelConfig(_Strict):
    """One configured model."""

    model_name: str
    """``provider/model``, as LiteLLM and DSPy name it (e.g. ``openai/gpt-4o-mini``)."""
    max_tokens: int = Field(default=1024, gt=0)
    """Upper bound of completion tokens per call."""
    additional_params: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for ``dspy.LM`` (``temperature``, ``top_p``, ...)."""
    engine: Literal["auto", "litellm"] | None = None
    """DSPy inference engine; ``None`` uses the settings' ``default_engine``."""
    api_base: str | None = None
    """Endpoint of the provider, e.g. ``http://127.0.0.1:8001/v1``."""
    api_key: SecretStr | None = None
    """The key itself, normally written as ``${SOME_ENV_VAR}``."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key (default: the provider's usual one)."""
    timeout_s: float | None = Field(default=None, gt=0)
    """Timeout of one HTTP attempt; ``None`` uses the settings' ``model_timeout_s``."""
    first_token_timeout_s: float | None = Field(default=None, gt=0)
    """Streamed calls: an attempt whose first piece has not arrived after this many seconds is
    abandoned as a timeout (retried or handed to a fallback); ``None``: only the deadline."""
    max_connections: int | None = Field(default=None, ge=1, le=10_000)
    """HTTP connections to the provider at once, per event loop (DSPy's native engine; ``None``:
    its default of 100). Calls beyond it wait for a connection, inside the request deadline."""
    adapter: Literal["chat", "json", "xml"] | None = None
    """The DSPy adapter that formats this model's prompts and parses its answers
    (``ChatAdapter``, ``JSONAdapter``, ``XMLAdapter``); a program's own choice wins, and
    ``None`` keeps the host's ``dspy.configure(adapter=...)`` or the library's ChatAdapter."""
    parse_policy: ParsePolicy | None = None
    """What to do with an answer that cannot be parsed (re-asks, JSON fallback, a larger
    ``max_tokens`` after truncation); a program's own policy wins; ``None``: ask nothing more."""
    cache: bool = False
    """Opt in to DSPy's response cache (its key ignores the endpoint and the key)."""
    shared_cache: SharedCacheConfig | None = None
    """Opt in to the fleet's response cache in Redis, keyed by model, endpoint, key
    fingerprint, tenant and request (needs ``LLM_SERVER_REDIS_URL``)."""
    context_window: int | None = Field(default=None, gt=0)
    """Context window in tokens, when LiteLLM's price map does not know the model."""
    pricing: PricingConfig | None = None
    """Price override; otherwise LiteLLM's bundled price map is used."""
    fallbacks: list[str] = Field(default_factory=list)
    """Model ids to try, in order, when this model's breaker is open or its retries ran out."""
    circuit_breaker: BreakerConfig | None = None
    """Breaker overrides for this model."""
    retry: RetryConfig | None = None
    """Retry overrides for this model."""
    rate_limit: RateLimitConfig | None = None
    """Requests and tokens per minute this model may use (fleet-wide with Redis)."""

    @model_validator(mode="after")
    def _one_cache(self) -> ModelConfig:
        if self.cache and self.shared_cache is not None:
            raise ValueError(
                "choose 'cache' (DSPy's per-process cache) or 'shared_cache' (the fleet's), "
                "not both"
            )
        cap = self.parse_policy.truncation_max_tokens if self.parse_policy else None
        if cap is not None and cap <= self.max_tokens:
            raise ValueError(
                f"parse_policy.truncation_max_tokens ({cap}) must be larger than max_tokens "
                f"({self.max_tokens}): it is the cap of the re-ask after a cut answer"
            )
        return self

    @field_validator("model_name")
    @classmethod
    def _has_provider(cls, value: str) -> str:
        provider, sep, name = value.partition("/")
        if not sep or not provider.strip() or not name.strip():
            raise ValueError(f"must be 'provider/model' (e.g. 'openai/gpt-4o-mini'), got {value!r}")
        return value

    @property
    def provider(self) -> str:
        """The provider prefix of ``model_name`` (``openai`` for ``openai/gpt-4o-mini``)."""
        return self.model_name.partition("/")[0]

    @property
    def base_model(self) -> str:
        """``model_name`` without its provider prefix."""
        return self.model_name.partition("/")[2]


class ModelsConfig(_Strict):
    """The whole model configuration file."""

    models: dict[str, ModelConfig] = Field(min_length=1)
    budgets: dict[str, BudgetConfig] = Field(default_factory=dict)
    """Spending and usage budgets per tenant id; ``"*"`` applies to every other tenant."""
    capture: dict[str, CaptureConfig] = Field(default_factory=dict)
    """Traffic capture per program id (opt-in; see :mod:`llm_server.traffic`)."""

    @model_validator(mode="after")
    def _fallbacks_exist(self) -> ModelsConfig:
        for model_id, model in self.models.items():
            for fallback in model.fallbacks:
                if fallback == model_id:
                    raise ValueError(f"model {model_id!r} lists itself in 'fallbacks'")
                if fallback not in self.models:
                    raise ValueError(
                        f"model {model_id!r} has unknown fallback {fallback!r}; "
                        f"known model ids: {', '.join(sorted(self.models))}"
                    )
        return self
