"""llm_server_lifespan: builds at startup (no provider calls), composes, closes at shutdown."""

from __future__ import annotations

import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
import psutil
import pytest
from _web_helpers import MakeApp, Summarize, make_settings, models_for, serving
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import MissingAPIKeyError
from llm_server.fastapi import (
    get_model_manager,
    get_program_manager,
    get_settings,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.models.manager import ModelManager
from llm_server.models.program_manager import ProgramManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


async def test_startup_sets_state_and_makes_no_provider_call(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app()
    async with app.router.lifespan_context(app):
        assert isinstance(app.state.settings, FrameworkSettings)
        assert isinstance(app.state.model_manager, ModelManager)
        assert isinstance(app.state.program_manager, ProgramManager)
        assert app.state.program_manager.model_manager is app.state.model_manager
        served = app.state.program_manager.registry.get_program_metadata("summarize")
        assert served.model_dump() == {"id": "summarize", "version": "1.0.0", "name": "Summarizer"}
        assert app.state.llm_server_ready is True
        assert provider.requests == [], "startup must not call a provider"
    assert app.state.llm_server_ready is False
    assert app.state.model_manager is None
    assert app.state.program_manager is None


async def test_host_lifespan_runs_inside_with_ready_managers(make_app: MakeApp) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # the framework is built before the host's startup and still there at its shutdown
        assert app.state.program_manager is not None
        assert app.state.llm_server_ready is False
        events.append("host start")
        yield {"greeting": "hello"}
        assert app.state.model_manager is not None
        assert app.state.llm_server_ready is False  # traffic stops before the host shuts down
        events.append("host stop")

    app = make_app(lifespan=host)
    async with app.router.lifespan_context(app) as state:
        events.append("serving")
    assert state == {"greeting": "hello"}, "the host's lifespan state is passed on"
    assert events == ["host start", "serving", "host stop"]
    assert app.state.model_manager is None


def test_host_lifespan_state_reaches_requests_over_the_asgi_lifespan(make_app: MakeApp) -> None:
    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        yield {"greeting": "hello"}

    app = make_app(lifespan=host)

    @app.get("/greeting")
    async def greeting(request: Request) -> dict[str, str]:
        return {"greeting": request.state.greeting}

    with TestClient(app) as client:  # drives the real ASGI lifespan protocol
        assert client.get("/greeting").json() == {"greeting": "hello"}
        assert client.get("/health/ready").status_code == 200


def _connections_to(port: int) -> int:
    return sum(
        1
        for c in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


async def test_shutdown_closes_the_model_clients(
    make_app: MakeApp, provider: LocalProvider
) -> None:
    app = make_app()
    async with serving(app) as client:
        response = await client.post("/programs/summarize", json={"text": "keep me alive"})
        assert response.status_code == 200
        assert _connections_to(provider.port) >= 1, "a keep-alive connection to the provider"
    for _ in range(100):  # the sockets close at once; allow the kernel a moment to report it
        if _connections_to(provider.port) == 0:
            break
        await anyio.sleep(0.005)
    assert _connections_to(provider.port) == 0


async def test_a_bad_config_fails_startup_naming_the_problem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    config = tmp_path / "models.yml"
    config.write_text('models:\n  gpt-4o-mini:\n    model_name: "openai/gpt-4o-mini"\n')
    app = FastAPI(
        lifespan=llm_server_lifespan(settings=make_settings(tmp_path), config_path=config)
    )
    with pytest.raises(MissingAPIKeyError, match="OPENAI_API_KEY"):
        async with app.router.lifespan_context(app):
            pass
    assert app.state.llm_server_ready is False


async def test_yaml_config_path_from_settings(tmp_path: Path, provider: LocalProvider) -> None:
    config = tmp_path / "models.yml"
    config.write_text(
        "models:\n  local:\n    model_name: openai/gpt-4o-mini\n"
        f"    api_base: {provider.openai_api_base}\n"
    )
    settings = make_settings(tmp_path, llm_config_path=config)
    app = FastAPI(lifespan=llm_server_lifespan(programs=[Summarize], settings=settings))
    async with app.router.lifespan_context(app):
        assert app.state.model_manager.model_ids == ["local"]
        assert (tmp_path / "programs" / "summarize" / "1.0.0").is_dir()


async def test_dependencies_hand_the_managers_to_routes(make_app: MakeApp) -> None:
    app = make_app()

    @app.get("/mine")
    async def mine(
        programs: Annotated[ProgramManager, Depends(get_program_manager)],
        models: Annotated[ModelManager, Depends(get_model_manager)],
        settings: Annotated[FrameworkSettings, Depends(get_settings)],
    ) -> dict[str, Any]:
        return {
            "programs": len(programs.registry),
            "models": models.model_ids,
            "attempts": settings.retry_max_attempts,
        }

    async with serving(app) as client:
        response = await client.get("/mine")
    assert response.json() == {"programs": 2, "models": ["gpt-4o-mini", "gpt-4o"], "attempts": 1}


async def test_dependencies_without_the_lifespan_explain_what_is_missing() -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/mine")
    async def mine(programs: Annotated[ProgramManager, Depends(get_program_manager)]) -> None:
        raise AssertionError("not reached")

    async with serving(app) as client:
        response = await client.get("/mine")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "configuration_error"
    assert "llm_server_lifespan" in response.json()["error"]["message"]


async def test_freeze_gc_freezes_the_startup_heap_once_ready(
    provider: LocalProvider, tmp_path: Path
) -> None:
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Summarize],
            settings=make_settings(tmp_path),
            config_provider=StaticConfigProvider(models_for(provider)),
            freeze_gc=True,
        )
    )
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            assert app.state.llm_server_ready is True
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
