"""FrameworkSettings: the reference names, defaults and readable errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import ConfigurationError


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in ("LLM_CONFIG_PATH", "OTEL_ENABLED", "OTEL_SERVICE_NAME", "OTEL_SERVICE_VERSION"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_reference() -> None:
    settings = FrameworkSettings()
    assert settings.llm_config_path == Path("config/model_config.yml")
    assert settings.otel_enabled is False
    assert settings.retry_max_attempts >= 1


def test_reads_the_reference_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_CONFIG_PATH", "elsewhere.yml")
    monkeypatch.setenv("OTEL_ENABLED", "true")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "MyLLMApp")
    monkeypatch.setenv("OTEL_SERVICE_VERSION", "1.0.0")
    settings = FrameworkSettings()
    assert settings.llm_config_path == Path("elsewhere.yml")
    assert settings.otel_enabled is True
    assert (settings.otel_service_name, settings.otel_service_version) == ("MyLLMApp", "1.0.0")


def test_reads_a_dotenv_file(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text('OTEL_ENABLED=true\nOTEL_SERVICE_NAME="FromDotenv"\n')
    settings = FrameworkSettings()
    assert settings.otel_enabled is True
    assert settings.otel_service_name == "FromDotenv"


@pytest.mark.parametrize(
    ("environment", "detail", "legacy"),
    [
        ({}, "genai", None),
        ({"LLM_SERVER_TELEMETRY_DETAIL": "full"}, "full", None),
        ({"LLM_SERVER_OTEL_LLM_ATTRIBUTES": "true"}, "genai", True),
        (
            {"LLM_SERVER_TELEMETRY_DETAIL": "full", "LLM_SERVER_OTEL_LLM_ATTRIBUTES": "0"},
            "full",
            False,
        ),
    ],
)
def test_the_telemetry_detail_level_and_its_legacy_override_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], detail: str, legacy: bool | None
) -> None:
    for name in ("LLM_SERVER_TELEMETRY_DETAIL", "LLM_SERVER_OTEL_LLM_ATTRIBUTES"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    settings = FrameworkSettings()
    assert (settings.telemetry_detail, settings.otel_llm_attributes) == (detail, legacy)


def test_keyword_arguments_override_by_field_name() -> None:
    assert FrameworkSettings(otel_enabled=True, retry_max_attempts=1).retry_max_attempts == 1


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OTEL_ENABLED", "maybe"),
        ("LLM_SERVER_RETRY_MAX_ATTEMPTS", "0"),
        ("LLM_SERVER_BREAKER_RESET_TIMEOUT_S", "-1"),
        ("LLM_SERVER_BREAKER_RESET_TIMEOUT_S", "inf"),
        ("LLM_SERVER_DEFAULT_ENGINE", "turbo"),
        ("LLM_SERVER_REQUEST_DEADLINE_S", "soon"),
        ("LLM_SERVER_TELEMETRY_DETAIL", "verbose"),
    ],
)
def test_invalid_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=variable) as info:
        FrameworkSettings()
    assert repr(value) in str(info.value)


def test_a_key_pasted_into_a_setting_is_not_echoed() -> None:
    with pytest.raises(ConfigurationError) as info:
        FrameworkSettings(request_deadline_s="sk-proj-abcdefghijklmnop1234")
    assert "abcdefghijklmnop" not in str(info.value)
    assert "LLM_SERVER_REQUEST_DEADLINE_S" in str(info.value)
