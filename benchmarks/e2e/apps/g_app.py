"""(G) A README-style service guarded by the library: what the reliability runs measure.

The lifespan helper, one program endpoint (``POST /programs/predictor``, body
``{"input": ..., "model_id": ...}``), the error handlers, the request-context middleware and
the health router, with one model on the local provider. Reliability settings come from the
environment (``LLM_SERVER_BREAKER_*``, ``LLM_SERVER_REQUEST_DEADLINE_S``, ...), as a
deployment would set them. With ``BENCH_OTEL=1`` an OpenTelemetry SDK exports (to memory) as
in F+SDK; ``BENCH_FASTAPI_TELEMETRY=0`` then turns FastAPI's own instrumentation off.
``POST /bench/breaker/{open|reset}`` forces the model's breaker, for refusal runs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request

CONFIG = """
models:
  gpt-4o-mini:
    model_name: "openai/gpt-4o-mini"
    max_tokens: 256
    api_base: "${LLM_SERVER_PROVIDER_URL}/v1"
"""


def load_app() -> Any:
    """Build the app (configures the SDK first when ``BENCH_OTEL=1``)."""
    if os.environ.get("BENCH_OTEL") == "1":
        from e2e.apps.f_otel import configure_sdk

        configure_sdk()
    from llm_server.fastapi import (
        RequestContextMiddleware,
        add_program_endpoint,
        get_model_manager,
        health_router,
        install_error_handlers,
        llm_server_lifespan,
    )
    from llm_server.models.predictor import Predictor

    folder = Path(tempfile.mkdtemp(prefix="llm-server-g-"))
    (folder / "model_config.yml").write_text(CONFIG, encoding="utf-8")
    os.environ.setdefault("LLM_PROGRAMS_DIR", str(folder / "programs"))
    # BENCH_FASTAPI_TELEMETRY=0: FastAPI's own spans and metrics off (ours stay on).
    own = os.environ.get("BENCH_FASTAPI_TELEMETRY", "1") == "1"
    app = FastAPI(
        lifespan=llm_server_lifespan(
            programs=[Predictor], config_path=str(folder / "model_config.yml")
        ),
        telemetry=None if own else {"tracing": False, "metrics": False},
    )
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router())
    add_program_endpoint(
        app, "predictor", signature=Predictor, default_model_id="gpt-4o-mini", stream=True
    )

    @app.post("/bench/breaker/{action}")
    async def force(action: str, request: Request) -> dict[str, str]:
        breaker = get_model_manager(request).breakers["gpt-4o-mini"]
        breaker.force_open() if action == "open" else breaker.reset()
        return {"state": breaker.state.value}

    return app
