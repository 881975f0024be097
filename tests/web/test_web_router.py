"""The health router: liveness, readiness, models with breaker state, programs with versions."""

from __future__ import annotations

import dspy
import pytest
from _web_helpers import PLANTED_KEY, MakeApp, serving
from fastapi import FastAPI

from llm_server.fastapi import health_router, install_error_handlers
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


async def test_live_and_ready(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        live = await client.get("/health/live")
        ready = await client.get("/health/ready")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_not_ready_without_the_framework_lifespan() -> None:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router(prefix="/ops"))
    async with serving(app) as client:
        live = await client.get("/ops/health/live")
        responses = [
            await client.get(f"/ops{p}") for p in ("/health/ready", "/models", "/programs")
        ]
    assert live.status_code == 200
    for response in responses:
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "not_ready"
        assert response.headers["retry-after"] == "1"


async def test_models_show_config_prices_and_breaker_state(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    provider.add_fault("server_error", model="gpt-4o")
    app = make_app(breaker_failure_threshold=2)
    async with serving(app) as client:
        for _ in range(2):
            await client.post("/programs/summarize", json={"text": "x", "model_id": "gpt-4o"})
        await client.post("/programs/summarize", json={"text": "x"})
        response = await client.get("/models")
    assert response.status_code == 200
    models = {m["id"]: m for m in response.json()["models"]}
    assert list(models) == ["gpt-4o-mini", "gpt-4o"]  # file order
    mini, big = models["gpt-4o-mini"], models["gpt-4o"]
    assert mini["provider"] == "openai"
    assert mini["base_model"] == "gpt-4o-mini"
    assert mini["model_name"] == "openai/gpt-4o-mini"
    assert mini["engine"] == "lm15"
    assert mini["input_cost_per_million"] == pytest.approx(0.15)
    assert mini["context_window"] == 128000
    assert mini["fallbacks"] == []
    assert mini["breaker"]["state"] == "closed"
    assert mini["breaker"]["successes"] == 1
    assert big["breaker"]["state"] == "open"
    assert big["breaker"]["failures"] == 2
    assert 0 < big["breaker"]["retry_after_s"] <= 60
    assert PLANTED_KEY not in response.text


async def test_programs_list_served_and_stored_versions(make_app: MakeApp) -> None:
    app = make_app()
    async with serving(app) as client:
        first = (await client.get("/programs")).json()
        manager = app.state.program_manager
        improved = dspy.Predict(manager.registry.get_program_class("summarize"))
        improved.signature = improved.signature.with_instructions("Be brief.")
        await manager.asave_program_version("summarize", improved, notes="tuned")
        second = (await client.get("/programs")).json()
    by_id = {p["id"]: p for p in first["programs"]}
    assert set(by_id) == {"summarize", "tally"}
    figures = by_id["summarize"].pop("figures")  # live figures: tests/web/test_web_canary.py
    assert (figures["stable"]["version"], figures["canary"]) == ("1.0.0", None)
    assert by_id["summarize"] == {
        "id": "summarize",
        "name": "Summarizer",
        "version": "1.0.0",
        "pinned": False,
        "versions": ["1.0.0"],
        "description": None,
    }
    after = {p["id"]: p for p in second["programs"]}["summarize"]
    assert after["version"] == after["versions"][-1] != "1.0.0"
    assert after["versions"][0] == "1.0.0"


async def test_openapi_documents_the_router(make_app: MakeApp) -> None:
    async with serving(make_app()) as client:
        schema = (await client.get("/openapi.json")).json()
    assert {"/health/live", "/health/ready", "/models", "/programs"} <= set(schema["paths"])
    models = schema["components"]["schemas"]["ModelStatus"]["properties"]
    assert {"id", "engine", "breaker", "fallbacks"} <= set(models)
