"""An optional router: liveness, readiness, models (with breaker state) and programs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llm_server.fastapi._errors import error_response

__all__ = ["health_router"]


def health_router(*, prefix: str = "") -> APIRouter:
    """Build the router.

    Routes: ``GET /health/live`` (the process answers), ``GET /health/ready`` (200 once the
    config is loaded and the models are built, else 503), ``GET /models`` (configured models
    with their breaker state) and ``GET /programs`` (registered programs and stored versions).
    """
    router = APIRouter(prefix=prefix, tags=["llm-server"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/health/ready", response_model=None)
    async def ready(request: Request) -> dict[str, str] | JSONResponse:
        if getattr(request.app.state, "llm_server_ready", False):
            return {"status": "ready"}
        return error_response(503, "not_ready", "llm-server is starting or stopping")

    @router.get("/models", response_model=None)
    async def models(request: Request) -> dict[str, Any] | JSONResponse:
        manager = getattr(request.app.state, "model_manager", None)
        if manager is None:
            return error_response(503, "not_ready", "models are not built yet")
        return {"models": manager.describe_models()}

    @router.get("/programs", response_model=None)
    async def programs(request: Request) -> dict[str, Any] | JSONResponse:
        manager = getattr(request.app.state, "program_manager", None)
        if manager is None:
            return error_response(503, "not_ready", "programs are not registered yet")
        return {"programs": manager.describe_programs()}

    return router
