"""Pure rules of the model layer: pricing, keys, endpoints, error translation, usage summaries."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from llm_server.core.errors import (
    LLMServerError,
    MissingAPIKeyError,
    ModelTimeoutError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
)
from llm_server.core.model_config import ModelConfig, PricingConfig
from llm_server.core.model_interfaces import TokenCountMethod, TokenUsage
from llm_server.core.pricing import ModelPrice, cost_usd, lookup_model, resolve_price
from llm_server.core.telemetry import register_secret
from llm_server.models._engine import (
    LOCAL_PLACEHOLDER_KEY,
    is_local_endpoint,
    normalise_api_base,
    resolve_api_key,
)
from llm_server.models._errors import translate_error
from llm_server.models._usage import summarize_calls

# --- pricing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_name", "known"),
    [
        ("openai/gpt-4o-mini", True),
        ("gemini/gemini-2.5-flash", True),  # the map's key carries the prefix
        ("anthropic/claude-sonnet-4-5", True),  # the map's key is the bare name
        ("openrouter/gpt-4o-mini", False),  # the bare name belongs to another provider
        ("huggingface/meta-llama/Meta-Llama-3.1-8B-Instruct", False),
        ("openai/not-a-model", False),
    ],
)
def test_price_lookup_follows_litellms_keys(model_name: str, known: bool) -> None:
    assert (resolve_price(model_name) is not None) is known


def test_price_lookup_agrees_with_litellm() -> None:
    import litellm

    for name in ("openai/gpt-4o-mini", "anthropic/claude-sonnet-4-5", "gemini/gemini-2.5-flash"):
        price = resolve_price(name)
        assert price is not None
        prompt, completion = litellm.cost_per_token(
            model=name, prompt_tokens=1_000_000, completion_tokens=1_000_000
        )
        assert (price.input_per_million, price.output_per_million) == pytest.approx(
            (prompt, completion)
        )
        entry = lookup_model(name)
        assert entry is not None
        assert entry.context_window == litellm.get_model_info(name)["max_input_tokens"]


def test_cost_bills_cached_prompt_tokens_at_the_cached_rate() -> None:
    price = ModelPrice(input_per_million=2.0, output_per_million=10.0, cached_input_per_million=0.5)
    usage = TokenUsage(1000, 100, 1100, TokenCountMethod.EXACT, cached_input_tokens=400)

    assert price.cost_usd(usage) == pytest.approx((600 * 2.0 + 400 * 0.5 + 100 * 10.0) / 1e6)


def test_cost_is_none_when_price_or_usage_is_unknown_and_zero_for_a_cache_hit() -> None:
    price = ModelPrice(input_per_million=1.0, output_per_million=1.0)
    usage = TokenUsage(10, 10, 20, TokenCountMethod.EXACT)

    assert cost_usd(usage, None) is None
    assert cost_usd(None, price) is None
    assert cost_usd(TokenUsage(0, 0, 0, TokenCountMethod.UNAVAILABLE), price) is None
    assert cost_usd(TokenUsage(0, 0, 0, TokenCountMethod.CACHED), price) == 0.0


def test_yaml_price_override_wins() -> None:
    override = PricingConfig(input_per_million=9.0, output_per_million=9.5)
    price = resolve_price("openai/gpt-4o-mini", override=override)
    assert price == ModelPrice(9.0, 9.5, None, source="config")


# --- keys and endpoints -----------------------------------------------------------------------


def config(**values: Any) -> ModelConfig:
    return ModelConfig.model_validate({"model_name": "openai/gpt-4o-mini", **values})


@pytest.mark.parametrize(
    ("api_base", "local"),
    [
        ("http://127.0.0.1:8000/v1", True),
        ("http://127.9.9.9/v1", True),
        ("http://localhost:1234", True),
        ("http://[::1]:80/v1", True),
        ("https://api.openai.com/v1", False),
        ("http://10.0.0.5/v1", False),
        (None, False),
    ],
)
def test_local_endpoints_are_recognised(api_base: str | None, local: bool) -> None:
    assert is_local_endpoint(api_base) is local


def test_yaml_key_wins_over_the_environment() -> None:
    key = resolve_api_key("m", config(api_key=SecretStr("from-yaml")), {"OPENAI_API_KEY": "env"})
    assert (key.value, key.env_var) == ("from-yaml", None)


def test_named_variable_and_provider_variable() -> None:
    named = resolve_api_key("m", config(api_key_env="TEAM"), {"TEAM": " t-key "})
    default = resolve_api_key("m", config(), {"OPENAI_API_KEY": "o-key"})
    assert (named.value, named.env_var) == ("t-key", "TEAM")
    assert (default.value, default.env_var) == ("o-key", "OPENAI_API_KEY")


def test_local_endpoint_without_key_gets_the_placeholder() -> None:
    key = resolve_api_key("m", config(api_base="http://127.0.0.1:9/v1"), {})
    assert key.placeholder
    assert key.value == LOCAL_PLACEHOLDER_KEY


@pytest.mark.parametrize(
    "values", [{}, {"api_base": "https://api.openai.com/v1"}, {"api_key": SecretStr(" ")}]
)
def test_missing_key_names_what_to_set(values: dict[str, Any]) -> None:
    with pytest.raises(MissingAPIKeyError) as caught:
        resolve_api_key("m", config(**values), {"OPENAI_API_KEY": "  "})
    assert caught.value.model_id == "m"


def test_keyless_and_unknown_providers_leave_credentials_to_their_client() -> None:
    ollama = ModelConfig(model_name="ollama_chat/llama3")
    custom = ModelConfig(model_name="somecloud/model-x")
    assert resolve_api_key("a", ollama, {}).value is None
    assert resolve_api_key("b", custom, {}).value is None


@pytest.mark.parametrize(
    ("provider_name", "written", "engine", "expected"),
    [
        ("anthropic", "http://h:1/v1", "lm15", "http://h:1/v1"),
        ("anthropic", "http://h:1/v1/", "litellm", "http://h:1"),
        ("anthropic", "http://h:1", "lm15", "http://h:1/v1"),
        ("anthropic", "http://h:1", "litellm", "http://h:1"),
        ("openai", "http://h:1/v1/", "litellm", "http://h:1/v1"),
        ("openai", "http://h:1/proxy", "lm15", "http://h:1/proxy"),
    ],
)
def test_api_base_is_normalised_per_engine(
    provider_name: str, written: str, engine: Any, expected: str
) -> None:
    assert normalise_api_base(provider_name, written, engine) == expected


# --- error translation (raw transport errors; the DSPy paths run over HTTP in test_backend) ---


def _status_error(status: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    return httpx.HTTPStatusError(f"HTTP {status}", request=request, response=response)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ReadTimeout("slow"), ModelTimeoutError),
        (TimeoutError("slow"), ModelTimeoutError),
        (httpx.ConnectError("refused"), ProviderUnavailableError),
        (ConnectionResetError("reset"), ProviderUnavailableError),
        (_status_error(503), ProviderUnavailableError),
        (_status_error(404), ProviderBadRequestError),
        (_status_error(429, {"retry-after": "12"}), RateLimitedError),
    ],
)
def test_transport_errors_are_translated(exc: Exception, expected: type[LLMServerError]) -> None:
    error = translate_error(exc, model_id="m")
    assert type(error) is expected
    assert error is not None
    assert getattr(error, "model_id", None) == "m"


def test_retry_after_is_read_from_the_cause_chain() -> None:
    from dspy.utils.exceptions import LMProviderError

    try:
        try:
            raise _status_error(429, {"Retry-After": "4"})
        except httpx.HTTPStatusError as inner:
            raise LMProviderError("wrapped without retry_after") from inner
    except LMProviderError as outer:
        error = translate_error(outer, model_id="m")
    assert isinstance(error, RateLimitedError)
    assert error.retry_after_s == 4.0


def test_program_bugs_are_not_translated() -> None:
    assert translate_error(KeyError("answer"), model_id="m") is None
    assert translate_error(json.JSONDecodeError("x", "", 0), model_id="m") is None


def test_messages_never_carry_a_key() -> None:
    register_secret("plain-looking-key-777")
    exc = httpx.ConnectError(
        "failed with Authorization: Bearer abcdefghijkl and plain-looking-key-777 "
        "and sk-proj-0123456789abcdef"
    )
    error = translate_error(exc, model_id="m")
    assert error is not None
    message = str(error)
    for secret in ("abcdefghijkl", "plain-looking-key-777", "sk-proj-0123456789abcdef"):
        assert secret not in message
    assert "[REDACTED]" in message


# --- usage summaries --------------------------------------------------------------------------


def _entry(usage: dict[str, Any], text: str = "answer text") -> dict[str, Any]:
    return {
        "messages": [{"role": "user", "content": "how many tokens is this?"}],
        "outputs": [text],
        "usage": usage,
        "response_model": "gpt-4o-mini-2024",
        "response": {"choices": [{"finish_reason": "length"}]},
    }


def test_two_calls_sum_exactly_with_cached_tokens() -> None:
    first = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    second = {
        "prompt_tokens": 20,
        "completion_tokens": 1,
        "total_tokens": 21,
        "prompt_tokens_details": {"cached_tokens": 8},
    }
    summary = summarize_calls(
        [_entry(first), _entry(second)], [first, second], model_name="openai/gpt-4o-mini"
    )
    assert summary.usage == TokenUsage(30, 6, 36, TokenCountMethod.EXACT, cached_input_tokens=8)
    assert summary.finish_reasons == ("length", "length")
    assert summary.response_model == "gpt-4o-mini-2024"


@pytest.mark.parametrize("reported", [{}, {"prompt_tokens": 0, "completion_tokens": 0}])
def test_unreported_usage_is_an_estimate_not_zero(reported: dict[str, int]) -> None:
    summary = summarize_calls([_entry(reported)], [reported], model_name="openai/gpt-4o-mini")
    assert summary.usage is not None
    assert summary.usage.method is TokenCountMethod.ESTIMATE
    assert summary.usage.input_tokens > 0
    assert summary.usage.output_tokens == 2  # "answer text"


def test_cache_hits_alone_are_labelled_cached() -> None:
    summary = summarize_calls([_entry({})], [], model_name="openai/gpt-4o-mini")
    assert summary.usage == TokenUsage(0, 0, 0, TokenCountMethod.CACHED)


def test_no_call_means_no_usage() -> None:
    assert summarize_calls([], [], model_name="openai/gpt-4o-mini").usage is None


def test_a_garbled_answers_lone_surrogates_are_mended_in_place() -> None:
    """Half a surrogate pair in a field (a JSON escape of half an emoji, which DSPy parses
    into a string no UTF-8 encoder takes) becomes U+FFFD, in nested lists and dicts too; a
    whole pair and valid text stay as they are, the same objects."""
    import dspy

    from llm_server.models.dspy_backend import _mend_lone_surrogates

    clean = ["plain", "café 😀"]
    prediction = dspy.Prediction(
        answer="odd \ud83d answer",
        pair="\ud83d\ude00",
        items=["x", "y \udc00"],
        nested={"k": ["\ud800"]},
        clean=clean,
        count=3,
    )
    _mend_lone_surrogates(prediction)
    assert prediction.answer == "odd \ufffd answer"
    assert prediction.pair == "😀"
    assert prediction["items"] == ["x", "y \ufffd"]
    assert prediction.nested == {"k": ["\ufffd"]}
    assert prediction.clean is clean
    assert prediction.count == 3
    for value in ("answer", "pair", "items", "nested"):
        assert str(prediction[value]).encode("utf-8")
