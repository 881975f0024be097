"""Every attribute and metric name we spell out equals the semantic-conventions constant."""

from __future__ import annotations

import pytest
from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai
from opentelemetry.semconv._incubating.metrics import gen_ai_metrics
from opentelemetry.semconv.attributes import error_attributes, server_attributes

from llm_server.core.telemetry import _names as names


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (names.GEN_AI_OPERATION_NAME, gen_ai.GEN_AI_OPERATION_NAME),
        (names.GEN_AI_PROVIDER_NAME, gen_ai.GEN_AI_PROVIDER_NAME),
        (names.GEN_AI_REQUEST_MODEL, gen_ai.GEN_AI_REQUEST_MODEL),
        (names.GEN_AI_REQUEST_MAX_TOKENS, gen_ai.GEN_AI_REQUEST_MAX_TOKENS),
        (names.GEN_AI_REQUEST_TEMPERATURE, gen_ai.GEN_AI_REQUEST_TEMPERATURE),
        (names.GEN_AI_RESPONSE_MODEL, gen_ai.GEN_AI_RESPONSE_MODEL),
        (names.GEN_AI_RESPONSE_FINISH_REASONS, gen_ai.GEN_AI_RESPONSE_FINISH_REASONS),
        (names.GEN_AI_USAGE_INPUT_TOKENS, gen_ai.GEN_AI_USAGE_INPUT_TOKENS),
        (names.GEN_AI_USAGE_OUTPUT_TOKENS, gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS),
        (names.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS, gen_ai.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS),
        (names.GEN_AI_TOKEN_TYPE, gen_ai.GEN_AI_TOKEN_TYPE),
        (names.GEN_AI_INPUT_MESSAGES, gen_ai.GEN_AI_INPUT_MESSAGES),
        (names.GEN_AI_OUTPUT_MESSAGES, gen_ai.GEN_AI_OUTPUT_MESSAGES),
        (names.SERVER_ADDRESS, server_attributes.SERVER_ADDRESS),
        (names.SERVER_PORT, server_attributes.SERVER_PORT),
        (names.ERROR_TYPE, error_attributes.ERROR_TYPE),
        (names.METRIC_OPERATION_DURATION, gen_ai_metrics.GEN_AI_CLIENT_OPERATION_DURATION),
        (names.METRIC_TOKEN_USAGE, gen_ai_metrics.GEN_AI_CLIENT_TOKEN_USAGE),
    ],
)
def test_name_matches_the_conventions(ours: str, theirs: str) -> None:
    assert ours == theirs


def test_provider_names_are_well_known_values() -> None:
    known = {value.value for value in gen_ai.GenAiProviderNameValues}
    assert set(names.PROVIDER_NAMES.values()) <= known


def test_token_types_are_well_known_values() -> None:
    assert {v.value for v in gen_ai.GenAiTokenTypeValues} == {"input", "output"}
    assert gen_ai.GenAiOperationNameValues.CHAT.value == "chat"
