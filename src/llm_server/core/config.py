"""Framework settings, read from the environment and a ``.env`` file.

Every setting has one environment variable. The classic names are kept as they are
(``LLM_CONFIG_PATH``, ``OTEL_ENABLED``, ``OTEL_SERVICE_NAME``, ``OTEL_SERVICE_VERSION``); the
framework's own defaults use the ``LLM_SERVER_`` prefix. The configuration reference of the
documentation lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact

__all__ = ["Engine", "FrameworkSettings", "TelemetryDetail"]

Engine = Literal["auto", "litellm"]
"""Which client calls a model: ``"auto"`` (DSPy's own where it supports the provider, else
LiteLLM) or ``"litellm"`` (always LiteLLM)."""
TelemetryDetail = Literal["genai", "full"]
"""How much telemetry the library records: ``genai`` (the default: the GenAI conventions'
model-call span and metrics plus the library's cost, error and refusal signals) or ``full``
(also pipeline and step spans and durations, the legacy ``llm.*`` span attributes and per-call
extras: model calls in flight, the wait for a connection)."""


class FrameworkSettings(BaseSettings):
    """Settings of the framework.

    Construct with no arguments to read the environment (and ``.env``), or pass field names
    to override. Invalid values raise :class:`~llm_server.core.errors.ConfigurationError`
    naming the environment variable.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
        frozen=True,
    )

    # --- the classic settings (names kept from the first releases) ---
    llm_config_path: Path = Field(
        default=Path("config/model_config.yml"), validation_alias=AliasChoices("LLM_CONFIG_PATH")
    )
    """Path of the YAML model configuration."""
    otel_enabled: bool = Field(default=False, validation_alias=AliasChoices("OTEL_ENABLED"))
    """Emit OpenTelemetry traces and metrics (the host app configures the SDK)."""
    otel_service_name: str = Field(
        default="llm-server", validation_alias=AliasChoices("OTEL_SERVICE_NAME")
    )
    """Service name for the host's OpenTelemetry resource."""
    otel_service_version: str = Field(
        default="0.0.0", validation_alias=AliasChoices("OTEL_SERVICE_VERSION")
    )
    """Service version for the host's OpenTelemetry resource."""

    # --- telemetry details ---
    otel_capture_message_content: bool = Field(
        default=False,
        validation_alias=AliasChoices("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"),
    )
    """Record prompts and completions on spans (opt-in; off by default for privacy)."""
    otel_content_max_length: int = Field(
        default=2000, gt=0, validation_alias=AliasChoices("LLM_SERVER_OTEL_CONTENT_MAX_LENGTH")
    )
    """Characters of captured content kept per attribute."""
    telemetry_detail: TelemetryDetail = Field(
        default="genai", validation_alias=AliasChoices("LLM_SERVER_TELEMETRY_DETAIL")
    )
    """``genai`` records what the GenAI conventions' dashboards and alerts need, each signal
    once; ``full`` adds pipeline and step spans and durations, the legacy ``llm.*`` attributes,
    the in-flight calls counter and the connection-wait histogram (see :data:`TelemetryDetail`)."""
    otel_llm_attributes: bool | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_OTEL_LLM_ATTRIBUTES")
    )
    """Also set the legacy ``llm.*`` span attributes next to the ``gen_ai.*`` ones (unset: only
    at ``telemetry_detail="full"``)."""

    # --- model layer ---
    llm_programs_dir: Path = Field(
        default=Path("dspy_programs"), validation_alias=AliasChoices("LLM_PROGRAMS_DIR")
    )
    """Folder of the file-system program storage."""
    default_engine: Engine = Field(
        default="auto", validation_alias=AliasChoices("LLM_SERVER_DEFAULT_ENGINE")
    )
    """DSPy inference engine for models whose YAML does not say (``auto`` or ``litellm``)."""
    model_timeout_s: float = Field(
        default=60.0, gt=0, validation_alias=AliasChoices("LLM_SERVER_MODEL_TIMEOUT_S")
    )
    """Timeout of one HTTP attempt to a provider, unless the model sets ``timeout_s``."""
    request_deadline_s: float = Field(
        default=120.0, gt=0, validation_alias=AliasChoices("LLM_SERVER_REQUEST_DEADLINE_S")
    )
    """Overall deadline of one model call, retries and fallbacks included."""
    blocking_workers: int = Field(
        default=4, gt=0, le=64, validation_alias=AliasChoices("LLM_SERVER_BLOCKING_WORKERS")
    )
    """Threads of the framework's own pool for blocking work (images, sync programs)."""
    max_request_bytes: int = Field(
        default=2 * 1024 * 1024,
        ge=1,
        validation_alias=AliasChoices("LLM_SERVER_MAX_REQUEST_BYTES"),
    )
    """Largest request body a program route accepts (413 beyond it, read no further)."""
    max_json_depth: int = Field(
        default=64, ge=1, le=1000, validation_alias=AliasChoices("LLM_SERVER_MAX_JSON_DEPTH")
    )
    """Deepest nesting of arrays and objects a program route's JSON body may have (400
    beyond it, refused before the body is parsed)."""
    gc_freeze: bool = Field(default=True, validation_alias=AliasChoices("LLM_SERVER_GC_FREEZE"))
    """Freeze the startup heap when the process's first ``ModelManager`` is built (once)."""
    gc_young_threshold: int = Field(
        default=7000, ge=0, validation_alias=AliasChoices("LLM_SERVER_GC_YOUNG_THRESHOLD")
    )
    """The garbage collector's young-generation threshold, set when a ``ModelManager`` is built
    while the process still has Python's own (700); ``0`` keeps Python's."""

    # --- retries ---
    retry_max_attempts: int = Field(
        default=3, ge=1, le=20, validation_alias=AliasChoices("LLM_SERVER_RETRY_MAX_ATTEMPTS")
    )
    """HTTP attempts per model call, the first included (1 disables retries)."""
    retry_initial_backoff_s: float = Field(
        default=0.5, ge=0, validation_alias=AliasChoices("LLM_SERVER_RETRY_INITIAL_BACKOFF_S")
    )
    """Backoff before the first retry; doubles each time, with full jitter."""
    retry_max_backoff_s: float = Field(
        default=8.0, ge=0, validation_alias=AliasChoices("LLM_SERVER_RETRY_MAX_BACKOFF_S")
    )
    """Upper bound of one backoff."""
    retry_after_cap_s: float = Field(
        default=30.0, ge=0, validation_alias=AliasChoices("LLM_SERVER_RETRY_AFTER_CAP_S")
    )
    """Longest provider ``Retry-After`` honoured; a longer one ends the retries."""

    # --- circuit breakers ---
    breaker_failure_threshold: int | None = Field(
        default=None, ge=1, validation_alias=AliasChoices("LLM_SERVER_BREAKER_FAILURE_THRESHOLD")
    )
    """Consecutive failures that open a model's breaker; set, it replaces the failure rate."""
    breaker_failure_rate_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        validation_alias=AliasChoices("LLM_SERVER_BREAKER_FAILURE_RATE_THRESHOLD"),
    )
    """Failure rate over the window that opens a model's breaker (the default policy)."""
    breaker_window_size: int = Field(
        default=100, ge=1, validation_alias=AliasChoices("LLM_SERVER_BREAKER_WINDOW_SIZE")
    )
    """Calls in the sliding window the failure rate is taken over."""
    breaker_minimum_calls: int = Field(
        default=20, ge=1, validation_alias=AliasChoices("LLM_SERVER_BREAKER_MINIMUM_CALLS")
    )
    """Calls the window must hold before the failure rate can open the breaker."""
    breaker_reset_timeout_s: float = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        validation_alias=AliasChoices("LLM_SERVER_BREAKER_RESET_TIMEOUT_S"),
    )
    """Seconds an open breaker waits before letting probes through."""
    breaker_half_open_max_calls: int = Field(
        default=3, ge=1, validation_alias=AliasChoices("LLM_SERVER_BREAKER_HALF_OPEN_MAX_CALLS")
    )
    """Probes a half-open breaker admits at once (judged together by the failure rate)."""

    program_store: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_PROGRAM_STORE")
    )
    """``postgresql://user:password@host:5432/db?sslmode=verify-full``: keep program versions
    and releases in PostgreSQL, shared by every replica (unset: files under
    ``LLM_PROGRAMS_DIR``)."""
    program_store_schema: str = Field(
        default="llm_server",
        pattern=r"^[a-z_][a-z0-9_]*$",
        validation_alias=AliasChoices("LLM_SERVER_PROGRAM_STORE_SCHEMA"),
    )
    """The PostgreSQL schema of the program tables (created if missing; no DDL runs when it is
    current, so a role with ``SELECT`` and ``INSERT`` can serve)."""
    program_store_timeout_s: float = Field(
        default=10.0, gt=0, validation_alias=AliasChoices("LLM_SERVER_PROGRAM_STORE_TIMEOUT_S")
    )
    """The longest one PostgreSQL operation may take (statement, lock wait, a silent path)."""
    program_store_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_PROGRAM_STORE_KEY")
    )
    """A secret of at least 16 characters: each program version saved to PostgreSQL carries
    an HMAC-SHA256 of its content, and versions without a valid one are refused at load, so
    an edit in the database that also rewrites the hashes is caught. Never shown."""
    capture_path: Path | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_CAPTURE_PATH")
    )
    """SQLite file of captured traffic and feedback when ``LLM_SERVER_PROGRAM_STORE`` is unset
    (default: ``traffic.sqlite3`` in ``LLM_PROGRAMS_DIR``); used only by programs that capture."""

    # --- a fleet (Redis) ---
    redis_url: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_REDIS_URL")
    )
    """``redis://host:6379/0`` (``rediss://`` for TLS, or ``redis+sentinel://host:port,.../name``
    for the primary Redis Sentinel names): share breakers and limits through Redis.
    Unset: everything is per process. A password in the URL is never shown."""
    redis_password: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("LLM_SERVER_REDIS_PASSWORD")
    )
    """Redis password, when it is not in the URL."""
    redis_prefix: str = Field(
        default="llm_server",
        min_length=1,
        pattern=r"^[A-Za-z0-9_.-]+$",
        validation_alias=AliasChoices("LLM_SERVER_REDIS_PREFIX"),
    )
    """Prefix of every Redis key (one per application sharing a Redis). No ``:``: keys are
    ``<prefix>:...``, so ``app`` and ``app:x`` would overlap."""
    redis_timeout_s: float = Field(
        default=0.05, gt=0, le=5, validation_alias=AliasChoices("LLM_SERVER_REDIS_TIMEOUT_S")
    )
    """Timeout of one Redis command; past it the process falls back to local state."""
    redis_required: bool = Field(
        default=False, validation_alias=AliasChoices("LLM_SERVER_REDIS_REQUIRED")
    )
    """Fail startup when Redis cannot be reached (default: start per process, warn, and
    share state as soon as Redis answers)."""
    redis_persistence_required: bool = Field(
        default=False, validation_alias=AliasChoices("LLM_SERVER_REDIS_PERSISTENCE_REQUIRED")
    )
    """Fail startup when Redis keeps no data across a restart (neither AOF nor RDB snapshots):
    tenants' budget usage lives there. Default: start, and log an error that says so when
    budgets are configured."""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    fields = FrameworkSettings.model_fields
    problems: list[str] = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "?"
        field = fields.get(key)
        env_name = key
        if field is not None and isinstance(field.validation_alias, AliasChoices):
            env_name = str(field.validation_alias.choices[0])
        shown = repr(error.get("input"))
        if redact(shown) != shown:  # a key pasted into the wrong variable is never repeated
            shown = "a value that looks like a secret, not shown"
        problems.append(f"{env_name}: {error['msg']} (got {shown})")
    return "invalid framework settings: " + "; ".join(problems)
