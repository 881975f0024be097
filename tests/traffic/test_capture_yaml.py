"""Capture set in the model configuration's ``capture:`` section, keyed by program id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from _traffic_helpers import PLANTED_KEY, Answer, settings_for
from fastapi import FastAPI

from llm_server.core.errors import ConfigurationError
from llm_server.defaults import YamlConfigProvider
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.testing import LocalProvider
from llm_server.traffic import CaptureOptions

pytestmark = pytest.mark.anyio


def _write_config(tmp_path: Path, provider_base: str, capture: Any) -> Path:
    config = {
        "models": {
            "gpt-4o-mini": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider_base,
                "api_key": PLANTED_KEY,
            }
        },
        "capture": capture,
    }
    path = tmp_path / "model_config.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _app(tmp_path: Path, config: Path, *, capture: CaptureOptions | None = None) -> FastAPI:
    """``POST /programs/answer``; registered with ``capture`` when given, else by the lifespan."""

    @asynccontextmanager
    async def register(app: FastAPI) -> AsyncIterator[None]:
        if capture is not None:
            app.state.program_manager.register_program(Answer, capture=capture)
        yield

    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Answer] if capture is None else [],
            settings=settings_for(tmp_path),
            config_path=config,
            lifespan=register,
        )
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    add_program_endpoint(app, "answer", signature=Answer, default_model_id="gpt-4o-mini")
    return app


async def test_the_yaml_capture_applies_when_the_program_is_registered(
    provider: LocalProvider, tmp_path: Path
) -> None:
    capture = {"answer": {"sample_rate": 1.0, "retention_days": 7, "redact_fields": ["email"]}}
    app = _app(tmp_path, _write_config(tmp_path, provider.openai_api_base, capture))
    async with app.router.lifespan_context(app):
        traffic = app.state.program_manager.traffic
        options = traffic.options("answer")
        assert options == CaptureOptions(
            sample_rate=1.0, retention_days=7, redact_fields=frozenset({"email"})
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/programs/answer", json={"question": "q", "email": "ann@secret.example"}
            )
        assert response.status_code == 200, response.text
        assert await traffic.aflush(10)
        stored = traffic.store.captures("answer")
    assert [c.inputs for c in stored] == [{"question": "q", "email": "[REDACTED]"}]


async def test_registration_options_win_over_the_yaml(
    provider: LocalProvider, tmp_path: Path
) -> None:
    capture = {"answer": {"sample_rate": 0.0, "retention_days": 7, "redact_fields": ["email"]}}
    given = CaptureOptions(sample_rate=1.0, retention_days=2)
    app = _app(tmp_path, _write_config(tmp_path, provider.openai_api_base, capture), capture=given)
    async with app.router.lifespan_context(app):
        assert app.state.program_manager.traffic.options("answer") == given


async def test_without_a_yaml_entry_nothing_is_captured(
    provider: LocalProvider, tmp_path: Path
) -> None:
    capture = {"other": {"sample_rate": 1.0}}
    app = _app(tmp_path, _write_config(tmp_path, provider.openai_api_base, capture))
    async with app.router.lifespan_context(app):
        assert app.state.program_manager.traffic is None


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param({"sample_rate": 1.5}, "key 'sample_rate'", id="sample-rate-above-1"),
        pytest.param({"sample_rate": -0.1}, "key 'sample_rate'", id="sample-rate-below-0"),
        pytest.param({"retention_days": 0}, "key 'retention_days'", id="retention-zero"),
        pytest.param({"retention_days": float("inf")}, "key 'retention_days'", id="retention-inf"),
        pytest.param({"redact_fields": "email"}, "key 'redact_fields'", id="fields-not-a-list"),
        pytest.param({"redact_fields": [""]}, "key 'redact_fields'", id="empty-field-name"),
        pytest.param({"sample": 0.5}, "did you mean 'sample_rate'?", id="unknown-key"),
        pytest.param({"redact": "my.hook"}, "unknown key", id="hooks-are-python-only"),
    ],
)
def test_a_bad_capture_entry_names_the_file_the_program_and_the_key(
    tmp_path: Path, entry: dict[str, Any], expected: str
) -> None:
    path = _write_config(tmp_path, "http://127.0.0.1:1/v1", {"answer": entry})
    with pytest.raises(ConfigurationError) as caught:
        YamlConfigProvider(path).load()
    message = str(caught.value)
    assert str(path) in message
    assert "capture of program 'answer'" in message
    assert expected in message
    assert "(line " in message
