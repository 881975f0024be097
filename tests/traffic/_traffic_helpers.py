"""An app serving one program with traffic capture, for the traffic tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import dspy
from fastapi import Depends, FastAPI

from llm_server.core.config import FrameworkSettings
from llm_server.fastapi import (
    RequestContextMiddleware,
    add_program_endpoint,
    install_error_handlers,
    llm_server_lifespan,
    tenant_header,
)
from llm_server.testing import LocalProvider, StaticConfigProvider
from llm_server.traffic import (
    CaptureOptions,
    TrafficRecorder,
    add_feedback_routes,
    enable_capture,
)

PLANTED_KEY = "sk-planted-traffic-0123456789abcdef"


class Answer(dspy.Signature):
    """Answer the question."""

    question: str = dspy.InputField()
    email: str = dspy.InputField()
    answer: str = dspy.OutputField()


def settings_for(tmp_path: Path, **overrides: Any) -> FrameworkSettings:
    values: dict[str, Any] = {
        "otel_enabled": False,
        "llm_programs_dir": tmp_path / "programs",
        "retry_max_attempts": 1,
        "breaker_failure_threshold": 50,
        "request_deadline_s": 30.0,
    }
    values.update(overrides)
    return FrameworkSettings(**values)


def models_for(provider: LocalProvider, **extra: Any) -> dict[str, Any]:
    price = {"input_per_million": 1.0, "output_per_million": 2.0}
    return {
        name: {
            "model_name": f"openai/{name}",
            "api_base": provider.openai_api_base,
            "api_key": PLANTED_KEY,
            "pricing": price,
            **extra,
        }
        for name in ("gpt-4o-mini", "judge-model")
    }


def build_app(
    provider: LocalProvider,
    tmp_path: Path,
    options: CaptureOptions | None,
    *,
    models: dict[str, Any] | None = None,
    recorder: TrafficRecorder | None = None,
    feedback_routes: bool = True,
    program: type = Answer,
    **settings: Any,
) -> FastAPI:
    """``POST /programs/<id>`` (tenant header), feedback routes; capture with ``options``."""
    program_id = program.__name__.lower()

    @asynccontextmanager
    async def host(app: FastAPI) -> AsyncIterator[None]:
        if recorder is not None:
            app.state.program_manager.traffic = recorder
        if options is not None:
            enable_capture(app.state.program_manager, program_id, options)
        yield

    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[program],
            settings=settings_for(tmp_path, **settings),
            config_provider=StaticConfigProvider(models or models_for(provider)),
            lifespan=host,
        ),
        dependencies=[Depends(tenant_header())],
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    add_program_endpoint(
        app, program_id, signature=program, default_model_id="gpt-4o-mini", stream=True
    )
    if feedback_routes:
        add_feedback_routes(app)
    return app
