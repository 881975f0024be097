"""Fixtures for the FastAPI integration tests: a local provider and an app factory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _web_helpers import MakeApp, Summarize, Tally, make_settings, models_for
from fastapi import FastAPI

from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    health_router,
    install_error_handlers,
    llm_server_lifespan,
)
from llm_server.testing import LocalProvider, StaticConfigProvider


@pytest.fixture(scope="module")
def provider_server() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
def provider(provider_server: LocalProvider) -> Iterator[LocalProvider]:
    """The module's provider, with no faults, scripts or records left from other tests."""
    provider_server.clear_faults()
    provider_server.clear()
    provider_server.script(reply=None)
    yield provider_server
    provider_server.clear_faults()
    provider_server.script(reply=None)


@pytest.fixture
def make_app(provider: LocalProvider, tmp_path: Path) -> MakeApp:
    """``make_app(middleware=True, models=None, lifespan=None, **settings)``: the full app.

    Registers ``Summarize`` and ``Tally`` with endpoints, the health router, the error
    handlers and (optionally) the request-context middleware.
    """

    def make(
        *,
        middleware: bool = True,
        models: dict[str, Any] | None = None,
        lifespan: Any = None,
        **settings: Any,
    ) -> FastAPI:
        app = FastAPI(
            lifespan=llm_server_lifespan(
                programs=[(Summarize, "Summarizer"), Tally],
                settings=make_settings(tmp_path, **settings),
                config_provider=StaticConfigProvider(models or models_for(provider)),
                lifespan=lifespan,
            )
        )
        install_error_handlers(app)
        if middleware:
            app.add_middleware(RequestContextMiddleware)
        app.include_router(health_router())
        add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")
        add_program_endpoint(app, "tally", signature=Tally, default_model_id="gpt-4o-mini")
        return app

    return make
