"""Response bodies of the integration: the error envelope and the health router's answers.

They are pydantic models so OpenAPI documents them; hosts can reuse :class:`ErrorEnvelope` in
their own routes' ``responses={...}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "BreakerStatus",
    "ErrorBody",
    "ErrorEnvelope",
    "HealthStatus",
    "ModelStatus",
    "ModelsResponse",
    "ProgramStatus",
    "ProgramsResponse",
]


class ErrorBody(BaseModel):
    """The ``error`` block of the error envelope."""

    type: str = Field(description="Stable machine-readable error type, e.g. circuit_open")
    message: str = Field(description="Human-readable message (secrets are redacted)")
    details: list[dict[str, Any]] | None = Field(
        default=None, description="Per-field problems, for validation errors"
    )


class ErrorEnvelope(BaseModel):
    """``{"success": false, "error": {...}, "execution_id": ...}``: every error response
    (``usage`` too when the request was billed before it failed)."""

    success: Literal[False] = False
    error: ErrorBody
    execution_id: str = Field(description="The request's id (also the X-Execution-ID header)")
    usage: dict[str, Any] | None = Field(
        default=None,
        description=(
            "What the request was billed before it failed, when anything was: input, output, "
            "total, cost_usd, method, calls (model_id, tokens, cost, outcome per reported "
            "attempt) and answer_attempts (rejected answers by kind)"
        ),
    )


class HealthStatus(BaseModel):
    """Answer of the liveness and readiness probes."""

    status: Literal["ok", "ready"]


class BreakerStatus(BaseModel):
    """A model's circuit breaker, as :class:`~llm_server.core.circuit_breaker.BreakerSnapshot`."""

    state: str = Field(description="closed, open, half_open, forced_open or disabled")
    retry_after_s: float = Field(description="Seconds until an open breaker lets a probe through")
    opened_because: str | None = Field(
        description="What opened the breaker (null while closed); the counts restart per state"
    )
    consecutive_failures: int
    window_calls: int = Field(description="Calls in the failure-rate window (this state)")
    window_failures: int = Field(description="Failures in the failure-rate window (this state)")
    half_open_in_flight: int
    successes: int
    failures: int
    ignored: int
    refused: int
    shared: bool = Field(
        default=False,
        description="Whether the state is the fleet's (Redis), not this process's alone",
    )
    last_change_by_fleet: bool = Field(
        default=False,
        description="Whether the latest transition was the fleet's decision (another process "
        "or the fleet's counts)",
    )
    forced_by: str | None = Field(
        default=None, description="Who forced the state (forced_open, disabled); else null"
    )
    forced_reason: str | None = Field(default=None, description="Why it was forced")
    forced_at: float | None = Field(default=None, description="Unix time it was forced")
    forced_until: float | None = Field(
        default=None,
        description="Unix time the forced state ends by itself (null: until reset)",
    )


class RateLimitStatus(BaseModel):
    """A model's ``rate_limit:`` and what it refused in this process."""

    requests_per_minute: int | None
    tokens_per_minute: int | None
    max_wait_s: float
    shared: bool = Field(description="Whether the counters are the fleet's (Redis)")
    refused_fleet: int = Field(description="Calls this process refused on the fleet's counts")
    refused_local: int = Field(description="Calls this process refused on its own counts")


class FleetStatus(BaseModel):
    """The fleet's shared state as this process sees it."""

    redis: str = Field(description="Redis's URL, without credentials")
    shared: bool = Field(description="False while Redis failed and state is per process")
    fallback_since: float | None = Field(description="Unix time the current fallback began")
    fallbacks: int = Field(description="Times this process fell back so far")
    members: int = Field(description="Processes seen alive in the last 5 s")
    timeouts: int = Field(
        description="Request-path Redis commands that timed out (each call decided locally)"
    )
    charges_unwritten: int = Field(
        default=0,
        description="Tenant periods whose budget charges are not yet written to Redis",
    )
    misconfigured: str | None = Field(
        default=None,
        description="The configuration error (NOPERM, WRONGTYPE, OOM) keeping state per process",
    )
    last_error: str | None = Field(default=None, description="The latest failed command's error")
    last_error_reason: str | None = Field(
        default=None,
        description="Its kind: timeout, failed, readonly, noperm, wrongtype or oom",
    )
    last_error_at: float | None = Field(default=None, description="Unix time of that error")
    sync_lag_s: float | None = Field(
        default=None,
        description="Seconds since the background sync thread last finished a turn (~0.1 s)",
    )


class PeriodUsage(BaseModel):
    """A tenant's usage and budget in the current UTC day or month."""

    requests: int
    tokens: int
    cost_usd: float
    budget_requests: int | None
    budget_tokens: int | None
    budget_cost_usd: float | None


class TenantUsage(BaseModel):
    """Answer of ``GET /tenants/{tenant_id}/usage``."""

    tenant: str
    periods: dict[str, PeriodUsage] = Field(description="day and/or month: the budgeted ones")
    shared: bool = Field(description="Whether the usage is the fleet's (Redis)")


class ModelStatus(BaseModel):
    """One configured model and the state of its breaker."""

    model_config = ConfigDict(protected_namespaces=())

    id: str
    provider: str
    base_model: str
    model_name: str = Field(description="provider/model as DSPy and LiteLLM name it")
    engine: str = Field(description="DSPy inference engine: lm15 or litellm")
    max_tokens: int
    max_connections: int | None = Field(
        description="Connections to the provider at once per worker (null: LiteLLM's own pool)"
    )
    context_window: int | None
    input_cost_per_million: float | None = Field(description="USD; null when unknown")
    output_cost_per_million: float | None = Field(description="USD; null when unknown")
    fallbacks: list[str] = Field(description="Models tried when this one is open or exhausted")
    breaker: BreakerStatus | None
    rate_limit: RateLimitStatus | None = None


class ModelsResponse(BaseModel):
    """Answer of ``GET /models``."""

    models: list[ModelStatus]
    fleet: FleetStatus | None = Field(
        default=None, description="Shared state (null without LLM_SERVER_REDIS_URL)"
    )


class ProgramStatus(BaseModel):
    """One registered program: the version it serves and every stored version."""

    id: str
    name: str
    version: str = Field(description="The version requests are served with")
    pinned: bool = Field(description="Whether the host pinned the served version")
    versions: list[str] = Field(description="Stored versions, oldest first")
    description: str | None = None
    figures: dict[str, Any] | None = Field(
        default=None,
        description="Live figures of the served version and the running canary side by side "
        "(requests, errors by type, parse failures, p50/p95/p99 ms, tokens and cost per request; "
        "with traffic capture, feedback per kind: count, scored, mean score, over the canary's "
        "period when one runs)",
    )


class ProgramsResponse(BaseModel):
    """Answer of ``GET /programs``."""

    programs: list[ProgramStatus]
