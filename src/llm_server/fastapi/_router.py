"""An optional router: liveness, readiness, models (with breaker state) and programs."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from llm_server.fastapi._errors import error_response
from llm_server.fastapi._schemas import (
    BreakerStatus,
    ErrorEnvelope,
    FleetStatus,
    HealthStatus,
    ModelsResponse,
    ModelStatus,
    ProgramsResponse,
    ProgramStatus,
    RateLimitStatus,
)

__all__ = ["health_router"]

_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorEnvelope, "description": "The framework is starting or stopping"}
}


def _not_ready(what: str) -> JSONResponse:
    return error_response(
        503, "not_ready", f"llm-server is not ready: {what}", headers={"Retry-After": "1"}
    )


def _model_status(manager: Any, model_id: str) -> ModelStatus:
    info = manager.model_info[model_id]
    fleet = manager.fleet
    breaker = manager.breakers.get(model_id)
    breaker_status = None
    if breaker is not None:
        snap = breaker.snapshot()
        breaker_status = BreakerStatus(
            state=str(snap.state),
            retry_after_s=round(snap.retry_after_s, 3),
            opened_because=snap.opened_because,
            consecutive_failures=snap.consecutive_failures,
            window_calls=snap.window_calls,
            window_failures=snap.window_failures,
            half_open_in_flight=snap.half_open_in_flight,
            successes=snap.successes,
            failures=snap.failures,
            ignored=snap.ignored,
            refused=snap.refused,
            shared=fleet is not None and not fleet.connection.fallback,
            last_change_by_fleet=breaker.last_change_by_fleet,
            forced_by=snap.forced.by if snap.forced else None,
            forced_reason=snap.forced.reason if snap.forced else None,
            forced_at=snap.forced.at if snap.forced else None,
            forced_until=snap.forced.until if snap.forced else None,
        )
    limiter = manager.limiters.get(model_id)
    limit_status = None
    if limiter is not None:
        limit_status = RateLimitStatus(
            requests_per_minute=limiter.requests_per_minute,
            tokens_per_minute=limiter.tokens_per_minute,
            max_wait_s=limiter.max_wait_s,
            shared=fleet is not None and not fleet.connection.fallback,
            refused_fleet=limiter.refused_fleet,
            refused_local=limiter.refused_local,
        )
    return ModelStatus(
        id=info.model_id,
        provider=info.provider,
        base_model=info.base_model,
        model_name=info.model_name,
        engine=info.engine,
        max_tokens=info.max_tokens,
        max_connections=info.max_connections,
        context_window=info.context_window,
        input_cost_per_million=info.input_cost_per_million,
        output_cost_per_million=info.output_cost_per_million,
        fallbacks=list(manager.config.models[model_id].fallbacks),
        breaker=breaker_status,
        rate_limit=limit_status,
    )


async def _figures(manager: Any, program_id: str) -> dict[str, Any] | None:
    """Stable and canary figures (``None`` for a program manager without them).

    In a worker thread: with traffic capture they include feedback, read from its store.
    """
    figures = getattr(manager, "canary_figures", None)
    if not callable(figures):
        return None
    found: dict[str, Any] | None = await anyio.to_thread.run_sync(figures, program_id)
    return found


def health_router(*, prefix: str = "", tags: list[str] | None = None) -> APIRouter:
    """Build the router; include it with ``app.include_router(health_router())``.

    Routes:

    - ``GET /health/live``: 200 while the process answers.
    - ``GET /health/ready``: 200 once the lifespan loaded the config and built the models
      (``app.state.llm_server_ready``), else 503 ``not_ready`` with ``Retry-After``.
    - ``GET /models``: each configured model (provider, engine, limits, prices, fallbacks)
      with its circuit breaker's state and counts and its rate limit, and the fleet's shared
      state (Redis in use or fallen back, processes seen) when ``LLM_SERVER_REDIS_URL`` is set.
    - ``GET /programs``: each registered program, the version it serves, the stored
      versions, and live figures of the served version and a running canary side by side.

    A tenant's usage is not here: it is per tenant, so it needs your authentication
    (:func:`~llm_server.fastapi.tenant_usage_router`).

    Args:
        prefix: A path prefix for every route (e.g. ``"/admin"``).
        tags: OpenAPI tags (default ``["llm-server"]``).
    """
    router = APIRouter(prefix=prefix, tags=list(tags or ["llm-server"]))

    @router.get("/health/live", response_model=HealthStatus)
    async def live() -> HealthStatus:
        return HealthStatus(status="ok")

    @router.get("/health/ready", response_model=HealthStatus, responses=_NOT_READY)
    async def ready(request: Request) -> HealthStatus | JSONResponse:
        if getattr(request.app.state, "llm_server_ready", False):
            return HealthStatus(status="ready")
        return _not_ready("starting or stopping")

    @router.get("/models", response_model=ModelsResponse, responses=_NOT_READY)
    async def models(request: Request) -> ModelsResponse | JSONResponse:
        manager = getattr(request.app.state, "model_manager", None)
        if manager is None:
            return _not_ready("models are not built")
        fleet = manager.fleet
        return ModelsResponse(
            models=[_model_status(manager, mid) for mid in manager.model_ids],
            fleet=FleetStatus(**fleet.describe()) if fleet is not None else None,
        )

    @router.get("/programs", response_model=ProgramsResponse, responses=_NOT_READY)
    async def programs(request: Request) -> ProgramsResponse | JSONResponse:
        manager = getattr(request.app.state, "program_manager", None)
        if manager is None:
            return _not_ready("programs are not registered")
        found: list[ProgramStatus] = []
        for meta in manager.registry.list_programs():
            versions = await manager.alist_versions(meta.id)  # disk I/O: off the event loop
            found.append(
                ProgramStatus(
                    id=meta.id,
                    name=meta.name,
                    version=meta.version,
                    pinned=meta.pinned,
                    versions=versions,
                    description=meta.description,
                    figures=await _figures(manager, meta.id),
                )
            )
        return ProgramsResponse(programs=found)

    return router
