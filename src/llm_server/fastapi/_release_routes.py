"""Admin routes for releases and canaries, behind the host's own credentials check."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, FastAPI, Request
from fastapi.params import Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from llm_server.core.errors import ConfigurationError, ProgramError
from llm_server.fastapi._errors import error_response
from llm_server.fastapi._state import get_program_manager

__all__ = ["add_release_routes"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    actor: str | None = Field(default=None, description="Who does it (recorded)")
    reason: str | None = Field(default=None, description="Why (recorded)")


class PromoteRequest(_Body):
    """Body of ``POST .../promote``."""

    version: str


class CanaryRequest(_Body):
    """Body of ``POST .../canary``: the version, its share, stickiness and guard."""

    version: str
    weight: float = Field(default=0.1, gt=0, lt=1, description="The canary's share of keys")
    sticky: str = Field(default="request", description="request, tenant or header:<Name>")
    guard: dict[str, Any] | None = Field(
        default=None, description="CanaryGuard thresholds (null: end it by hand)"
    )


class EndCanaryRequest(_Body):
    """Body of ``POST .../canary/end``."""

    outcome: Literal["promote", "rollback"]


def _conflict(exc: ProgramError) -> JSONResponse:
    status = exc.http_status if exc.http_status != 500 else 409
    return error_response(status, exc.error_type, str(exc))


def add_release_routes(
    app: FastAPI | APIRouter,
    *,
    dependencies: Sequence[Depends],
    prefix: str = "/admin",
    tags: list[str] | None = None,
) -> None:
    """Add the operator's routes: versions, releases, promote, roll back, and canaries.

    Every route runs ``dependencies`` first: pass the host's credentials check (for example
    ``[Depends(require_admin_token)]``); an empty list is refused, so the routes are never
    open by mistake. The routes use ``request.app.state.program_manager`` (the lifespan's):

    - ``GET {prefix}/programs/{id}/versions``: stored versions and the one served;
    - ``GET {prefix}/programs/{id}/releases``: every promotion and rollback;
    - ``POST {prefix}/programs/{id}/promote`` ``{"version", "actor", "reason"}``;
    - ``POST {prefix}/programs/{id}/rollback`` ``{"actor", "reason"}``;
    - ``POST {prefix}/programs/{id}/canary`` ``{"version", "weight", "sticky", "guard",
      "actor", "reason"}``: start a canary;
    - ``GET {prefix}/programs/{id}/canary``: the running canary, live figures side by side,
      and every canary so far (who, when, why, outcome);
    - ``POST {prefix}/programs/{id}/canary/end`` ``{"outcome", "actor", "reason"}``.

    A conflict (a canary running already, nothing to roll back) answers 409, an unknown
    program or version 404, each with the error envelope.

    Args:
        app: The app or router.
        dependencies: FastAPI dependencies every route runs (the host's credentials check).
        prefix: The routes' path prefix.
        tags: OpenAPI tags (default ``["llm-server admin"]``).

    Raises:
        ConfigurationError: ``dependencies`` is empty.
    """
    if not dependencies:
        raise ConfigurationError(
            "add_release_routes needs dependencies=[Depends(<your credentials check>)]: "
            "these routes change what every replica serves"
        )
    router = APIRouter(
        prefix=prefix, tags=list(tags or ["llm-server admin"]), dependencies=list(dependencies)
    )

    async def run(request: Request, operation: Callable[[Any], Any]) -> Any:
        pm = get_program_manager(request)
        try:
            return await anyio.to_thread.run_sync(operation, pm)
        except ProgramError as exc:
            return _conflict(exc)

    @router.get("/programs/{program_id}/versions")
    async def versions(program_id: str, request: Request) -> Any:
        def read(pm: Any) -> dict[str, Any]:
            serving = pm.registry.get_program_metadata(program_id).version
            stored = pm.list_versions(program_id)
            return {"program_id": program_id, "serving": serving, "versions": stored}

        return await run(request, read)

    @router.get("/programs/{program_id}/releases")
    async def releases(program_id: str, request: Request) -> Any:
        return await run(request, lambda pm: {"releases": pm.releases(program_id)})

    @router.post("/programs/{program_id}/promote")
    async def promote(program_id: str, body: PromoteRequest, request: Request) -> Any:
        def act(pm: Any) -> dict[str, Any]:
            meta = pm.promote(program_id, body.version, actor=body.actor, reason=body.reason)
            return {"program_id": program_id, "serving": meta.version}

        return await run(request, act)

    @router.post("/programs/{program_id}/rollback")
    async def rollback(program_id: str, body: _Body, request: Request) -> Any:
        def act(pm: Any) -> dict[str, Any]:
            meta = pm.rollback(program_id, actor=body.actor, reason=body.reason)
            return {"program_id": program_id, "serving": meta.version}

        return await run(request, act)

    @router.post("/programs/{program_id}/canary")
    async def start_canary(program_id: str, body: CanaryRequest, request: Request) -> Any:
        from llm_server.programs._canary_control import guard_from

        def act(pm: Any) -> dict[str, Any]:
            canary = pm.start_canary(
                program_id,
                body.version,
                weight=body.weight,
                sticky=body.sticky,
                guard=guard_from(body.guard),
                actor=body.actor,
                reason=body.reason,
            )
            return dict(canary.to_dict())

        return await run(request, act)

    @router.get("/programs/{program_id}/canary")
    async def watch_canary(program_id: str, request: Request) -> Any:
        def read(pm: Any) -> dict[str, Any]:
            history = [c.to_dict() for c in pm.canaries(program_id)]
            running = next((c for c in reversed(history) if c["ended_at"] is None), None)
            figures = pm.canary_figures(program_id)
            return {"running": running, "figures": figures, "canaries": history}

        return await run(request, read)

    @router.post("/programs/{program_id}/canary/end")
    async def end_canary(program_id: str, body: EndCanaryRequest, request: Request) -> Any:
        def act(pm: Any) -> dict[str, Any]:
            ended = pm.end_canary(program_id, body.outcome, actor=body.actor, reason=body.reason)
            return dict(ended.to_dict())

        return await run(request, act)

    target = app.router if isinstance(app, FastAPI) else app
    target.include_router(router)
