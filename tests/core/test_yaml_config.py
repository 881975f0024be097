"""YamlConfigProvider: the reference format, strict validation, readable errors, ${VAR}."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_server.core.errors import ConfigurationError, MissingAPIKeyError
from llm_server.core.protocols import ConfigProvider
from llm_server.defaults import YamlConfigProvider

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "models.yml"
    path.write_text(body)
    return path


def load(tmp_path: Path, body: str, **environ: str) -> object:
    return YamlConfigProvider(write(tmp_path, body), environ=environ).load()


def test_the_shipped_config_has_the_reference_four_models() -> None:
    provider = YamlConfigProvider(REPO / "config" / "model_config.yml")
    assert isinstance(provider, ConfigProvider)
    config = provider.load()
    assert list(config.models) == [
        "gpt-4o-mini",
        "claude-3.5-sonnet",
        "Meta-Llama-3.1-8B-Instruct",
        "gemini-2.0-flash",
    ]
    gpt = config.models["gpt-4o-mini"]
    assert (gpt.provider, gpt.base_model, gpt.max_tokens) == ("openai", "gpt-4o-mini", 3000)
    assert gpt.additional_params == {"temperature": 0.7, "top_p": 1.0}
    llama = config.models["Meta-Llama-3.1-8B-Instruct"]
    assert llama.provider == "huggingface"
    assert llama.base_model == "meta-llama/Meta-Llama-3.1-8B-Instruct"


def test_environment_references_are_expanded(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "models:\n  m:\n    model_name: openai/x\n    api_base: ${BASE}\n"
        "    api_key: ${KEY}\n    additional_params:\n      user: ${WHO:-nobody}\n",
        BASE="http://127.0.0.1:9/v1",
        KEY="sk-test",
    )
    model = config.models["m"]  # type: ignore[attr-defined]
    assert model.api_base == "http://127.0.0.1:9/v1"
    assert model.api_key.get_secret_value() == "sk-test"
    assert model.additional_params == {"user": "nobody"}
    assert "sk-test" not in repr(model)


def test_missing_api_key_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(MissingAPIKeyError, match="NOPE_KEY") as info:
        load(tmp_path, "models:\n  m:\n    model_name: openai/x\n    api_key: ${NOPE_KEY}\n")
    assert info.value.model_id == "m"
    assert info.value.env_var == "NOPE_KEY"


def test_missing_variable_elsewhere_names_file_model_and_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, "models:\n  m:\n    model_name: openai/x\n    api_base: ${NOPE}\n")
    assert str(info.value) == (
        f"{tmp_path / 'models.yml'}: model 'm', key 'api_base' (line 4, column 5): "
        "environment variable NOPE is not set"
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"nope\.yml: model config file not found"):
        YamlConfigProvider(tmp_path / "nope.yml").load()


@pytest.mark.parametrize("body", ["", "   \n# only a comment\n"])
def test_empty_file(tmp_path: Path, body: str) -> None:
    with pytest.raises(ConfigurationError, match=r"models\.yml: model config file is empty"):
        load(tmp_path, body)


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    body = "models:\n  m:\n    model_name: openai/x\n   bad: [unclosed\n"
    with pytest.raises(ConfigurationError, match=r"models\.yml: invalid YAML at line \d+"):
        load(tmp_path, body)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="expected a mapping"):
        load(tmp_path, "- a\n- b\n")


def test_python_tags_are_refused_by_safe_load(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="invalid YAML"):
        load(tmp_path, "models: !!python/object/apply:os.system ['echo hi']\n")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "models:\n  m:\n    max_tokens: 10\n",
            "model 'm', key 'model_name' (line 2, column 3): required key is missing",
        ),
        (
            "models:\n  m:\n    model_name: gpt-4o-mini\n",
            "model 'm', key 'model_name' (line 3, column 5): must be 'provider/model'",
        ),
        ("models:\n  m:\n    model_name: /x\n", "must be 'provider/model'"),
        (
            "models:\n  m:\n    model_name: openai/x\n    max_tokens: 0\n",
            "model 'm', key 'max_tokens' (line 4, column 5): "
            "Input should be greater than 0 (got 0)",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    max_tokens: -5\n",
            "model 'm', key 'max_tokens' (line 4, column 5): Input should be greater than 0",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    max_token: 10\n",
            "model 'm', key 'max_token' (line 4, column 5): unknown key; "
            "did you mean 'max_tokens'?",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    retry:\n      max_atempts: 2\n",
            "model 'm', key 'retry.max_atempts' (line 5, column 7): unknown key; "
            "did you mean 'max_attempts'?",
        ),
        (
            "modles:\n  m:\n    model_name: openai/x\n",
            "key 'modles' (line 1, column 1): unknown key",
        ),
        ("models: {}\n", "key 'models'"),
        (
            "models:\n  m:\n    model_name: openai/x\n    fallbacks: [ghost]\n",
            "unknown fallback 'ghost'",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    engine: turbo\n",
            "model 'm', key 'engine' (line 4, column 5)",
        ),
        (  # an infinite price would make every call's cost infinite (budgets, metrics, JSON)
            "models:\n  m:\n    model_name: openai/x\n    pricing:\n"
            "      input_per_million: .inf\n      output_per_million: 1\n",
            "model 'm', key 'pricing.input_per_million' (line 5, column 7): "
            "Input should be a finite number (got inf)",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    pricing:\n"
            "      input_per_million: 1\n      output_per_million: 1\n"
            "      cached_input_per_million: .inf\n",
            "key 'pricing.cached_input_per_million' (line 7, column 7): "
            "Input should be a finite number",
        ),
        (  # a fleet stores these in milliseconds (Redis): an infinity cannot be
            "models:\n  m:\n    model_name: openai/x\n    circuit_breaker:\n"
            "      reset_timeout_s: .inf\n",
            "key 'circuit_breaker.reset_timeout_s' (line 5, column 7): "
            "Input should be a finite number",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    shared_cache:\n      ttl_s: .inf\n",
            "key 'shared_cache.ttl_s' (line 5, column 7): Input should be a finite number",
        ),
        (
            "models:\n  m:\n    model_name: openai/x\n    shared_cache:\n      ttl_s: 1e12\n",
            "key 'shared_cache.ttl_s' (line 5, column 7): "
            "Input should be less than or equal to 3153600000",
        ),
        (  # an unset key does not limit; .inf is refused rather than read as "no limit"
            "models:\n  m:\n    model_name: openai/x\n"
            "budgets:\n  acme:\n    per_day:\n      cost_usd: .inf\n",
            "Input should be a finite number",
        ),
    ],
)
def test_schema_errors_name_file_model_and_key(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, body)
    message = str(info.value)
    assert message.startswith(str(tmp_path / "models.yml") + ": ")
    assert expected in message


MODEL_HEAD = "models:\n  m:\n    model_name: openai/x\n"


@pytest.mark.parametrize(
    "body",
    [
        MODEL_HEAD + '    api_key: ["sk-proj-abcdefghijklmnop1234"]\n',
        MODEL_HEAD + "    api_key: {nested: sk-proj-abcdefghijklmnop12}\n",
        MODEL_HEAD + "    timeout_s: sk-proj-abcdefghijklmnop1234\n",
    ],
)
def test_a_key_with_the_wrong_type_is_never_echoed(tmp_path: Path, body: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        load(tmp_path, body)
    for text in (str(info.value), repr(info.value)):
        assert "abcdefghijklmnop" not in text
        assert "(line 4, column 5)" in text
        assert "not shown" in text
