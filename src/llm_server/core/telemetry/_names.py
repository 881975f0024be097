"""Names and constants of the telemetry the library emits (private).

The ``gen_ai.*``, ``server.*`` and ``error.type`` names follow the OpenTelemetry GenAI semantic
conventions v1.41; they are spelled out here because ``opentelemetry-semantic-conventions`` is
an optional extra (the tests check every name against its constants). ``llm.*`` names are the
legacy aliases kept for dashboards built on them. ``llm_server.*`` names are our own.
"""

from __future__ import annotations

from typing import Final

from llm_server.core.errors import LLMServerError

# --- GenAI semantic conventions ------------------------------------------------------------
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME: Final = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
GEN_AI_REQUEST_MAX_TOKENS: Final = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_STREAM: Final = "gen_ai.request.stream"
GEN_AI_REQUEST_TEMPERATURE: Final = "gen_ai.request.temperature"
GEN_AI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GEN_AI_RESPONSE_FINISH_REASONS: Final = "gen_ai.response.finish_reasons"
GEN_AI_USAGE_INPUT_TOKENS: Final = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_OUTPUT_TOKENS: Final = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS: Final = "gen_ai.usage.cache_read.input_tokens"
GEN_AI_TOKEN_TYPE: Final = "gen_ai.token.type"
GEN_AI_INPUT_MESSAGES: Final = "gen_ai.input.messages"
GEN_AI_OUTPUT_MESSAGES: Final = "gen_ai.output.messages"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
ERROR_TYPE: Final = "error.type"

METRIC_OPERATION_DURATION: Final = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE: Final = "gen_ai.client.token.usage"

# Explicit bucket boundaries the conventions prescribe for the two GenAI client histograms.
OPERATION_DURATION_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TOKEN_USAGE_BUCKETS: Final = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
# Pipelines and steps include sub-millisecond work (parsing, resizing), so start lower.
PIPELINE_DURATION_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0,
)  # fmt: skip

# --- legacy llm.* aliases (kept for dashboards built on them) --------------------------------
LLM_REQUEST_TYPE: Final = "llm.request.type"
LLM_REQUEST_MODEL: Final = "llm.request.model"
LLM_RESPONSE_MODEL: Final = "llm.response.model"
LLM_PROVIDER: Final = "llm.provider"
LLM_REQUEST_MAX_TOKENS: Final = "llm.request.max_tokens"
LLM_REQUEST_TEMPERATURE: Final = "llm.request.temperature"
LLM_USAGE_PROMPT_TOKENS: Final = "llm.usage.prompt_tokens"
LLM_USAGE_COMPLETION_TOKENS: Final = "llm.usage.completion_tokens"
LLM_USAGE_TOTAL_TOKENS: Final = "llm.usage.total_tokens"

# --- llm_server.* --------------------------------------------------------------------------
MODEL_ID: Final = "llm_server.model_id"
PROGRAM_ID: Final = "llm_server.program_id"
RESPONSE_MODEL_ID: Final = "llm_server.response.model_id"
PIPELINE: Final = "llm_server.pipeline"
STEP: Final = "llm_server.step"
STEP_INDEX: Final = "llm_server.step.index"
OUTCOME: Final = "llm_server.outcome"
COST_USD: Final = "llm_server.usage.cost_usd"
TOKEN_METHOD: Final = "llm_server.usage.method"
ATTEMPTS: Final = "llm_server.attempts"
BREAKER: Final = "llm_server.circuit_breaker"
BREAKER_STATE: Final = "llm_server.circuit_breaker.state"
BREAKER_FROM_STATE: Final = "llm_server.circuit_breaker.from_state"
BREAKER_TO_STATE: Final = "llm_server.circuit_breaker.to_state"
FLEET_DECISION: Final = "llm_server.fleet_decision"
RATE_LIMIT: Final = "llm_server.rate_limit"
CACHE_HIT: Final = "llm_server.cache.hit"
FALLBACK_FROM: Final = "llm_server.fallback.from_model_id"
FALLBACK_TO: Final = "llm_server.fallback.to_model_id"
RETRY_ATTEMPT: Final = "llm_server.retry.attempt"
RETRY_DELAY_S: Final = "llm_server.retry.delay_s"
RETRY_AFTER_S: Final = "llm_server.retry_after_s"

METRIC_COST: Final = "llm_server.client.cost_usd"
METRIC_PIPELINE_DURATION: Final = "llm_server.pipeline.duration"
METRIC_STEP_DURATION: Final = "llm_server.pipeline.step.duration"
METRIC_BREAKER_STATE: Final = "llm_server.circuit_breaker.state"
METRIC_BREAKER_TRANSITIONS: Final = "llm_server.circuit_breaker.transitions"
METRIC_BREAKER_REFUSALS: Final = "llm_server.circuit_breaker.refusals"
METRIC_RATE_LIMIT_REFUSALS: Final = "llm_server.rate_limit.refusals"
METRIC_BUDGET_REFUSALS: Final = "llm_server.budget.refusals"
METRIC_CACHE_REQUESTS: Final = "llm_server.cache.requests"
METRIC_FLEET_FALLBACK: Final = "llm_server.fleet.fallback"
METRIC_RETRIES: Final = "llm_server.client.retries"
METRIC_FALLBACKS: Final = "llm_server.client.fallbacks"
METRIC_CUT_CALLS: Final = "llm_server.client.cut_calls"
METRIC_PARSE_FAILURES: Final = "llm_server.client.parse_failures"
PROGRAM_VERSION: Final = "llm_server.program_version"
ANSWER_KIND: Final = "llm_server.answer.kind"
PARSE_FAILURE_KINDS: Final = frozenset(
    {"unparseable_output", "output_truncated", "empty_output", "model_refused"}
)
METRIC_ACTIVE_CALLS: Final = "llm_server.client.active_calls"
METRIC_LOOP_LAG: Final = "llm_server.event_loop.lag"
METRIC_CONNECTION_WAIT: Final = "llm_server.client.connection_wait"
CONNECTION_WAIT_S: Final = "llm_server.connection_wait_s"
CONNECTION_WAIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip
LOOP_LAG_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
EVENT_CALL_CUT: Final = "llm_server.call_cut"

EVENT_RETRY: Final = "llm_server.retry"
EVENT_FIRST_CHUNK: Final = "llm_server.stream.first_chunk"
EVENT_STREAM_CANCELLED: Final = "llm_server.stream.cancelled"
TIME_TO_FIRST_CHUNK_S: Final = "llm_server.stream.time_to_first_chunk_s"
STREAM_CHUNKS: Final = "llm_server.stream.chunks"
METRIC_TIME_TO_FIRST_CHUNK: Final = "gen_ai.client.operation.time_to_first_chunk"
METRIC_TIME_PER_OUTPUT_CHUNK: Final = "gen_ai.client.operation.time_per_output_chunk"
# The GenAI conventions' advisory buckets for the two streaming histograms (seconds).
TIME_TO_FIRST_CHUNK_BUCKETS: Final = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
TIME_PER_OUTPUT_CHUNK_BUCKETS: Final = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip
EVENT_FALLBACK: Final = "llm_server.fallback"
EVENT_BREAKER_REFUSED: Final = "llm_server.circuit_breaker.refused"
EVENT_BREAKER_TRANSITION: Final = "llm_server.circuit_breaker.transition"

BREAKER_STATES: Final = ("closed", "open", "half_open")

# LiteLLM/DSPy provider prefixes -> gen_ai.provider.name well-known values.
PROVIDER_NAMES: Final[dict[str, str]] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "bedrock_converse": "aws.bedrock",
    "gemini": "gcp.gemini",
    "vertex_ai": "gcp.vertex_ai",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "deepseek": "deepseek",
    "groq": "groq",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "perplexity": "perplexity",
    "watsonx": "ibm.watsonx.ai",
}

# Where a provider listens when the configuration gives no api_base.
DEFAULT_SERVERS: Final[dict[str, tuple[str, int]]] = {
    "openai": ("api.openai.com", 443),
    "anthropic": ("api.anthropic.com", 443),
    "gcp.gemini": ("generativelanguage.googleapis.com", 443),
    "deepseek": ("api.deepseek.com", 443),
    "groq": ("api.groq.com", 443),
    "mistral_ai": ("api.mistral.ai", 443),
    "x_ai": ("api.x.ai", 443),
    "perplexity": ("api.perplexity.ai", 443),
    "cohere": ("api.cohere.com", 443),
}


def error_type(exc: BaseException) -> str:
    """A low-cardinality ``error.type``: our stable error code, else the qualified class name."""
    if isinstance(exc, LLMServerError):
        return exc.error_type
    return qualified_name(exc)


def qualified_name(exc: BaseException) -> str:
    """The exception's fully qualified class name (``builtins`` left out)."""
    cls = type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"
