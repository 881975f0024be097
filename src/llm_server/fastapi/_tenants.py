"""Who the caller is: a request-scoped tenant id, for budgets; and a tenant's usage route."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, Request
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse

from llm_server.core.errors import InputError
from llm_server.core.reliability._budgets import set_tenant
from llm_server.fastapi._router import _NOT_READY, _not_ready
from llm_server.fastapi._schemas import PeriodUsage, TenantUsage

__all__ = ["tenant_header", "tenant_usage_router", "validate_tenant_id"]

_TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]*")


def validate_tenant_id(value: str, *, max_length: int = 128, source: str = "tenant id") -> str:
    """``value`` if it is a usable tenant id, else a clear 400.

    A tenant id starts with a letter or digit and holds only letters, digits and ``. _ : @ -``,
    at most ``max_length`` characters: it becomes part of Redis keys and log lines.

    Raises:
        InputError: Empty, too long, or another character (HTTP 400 ``bad_input``).
    """
    if len(value) > max_length:
        raise InputError(f"the {source} is longer than {max_length} characters")
    if _TENANT_ID.fullmatch(value) is None:
        raise InputError(
            f"the {source} must start with a letter or digit and hold only letters, digits "
            "and . _ : @ -"
        )
    return value


def tenant_header(
    name: str = "X-Tenant-ID", *, required: bool = False, max_length: int = 128
) -> Callable[[Request], Awaitable[str | None]]:
    """A dependency that reads the tenant id from a request header.

    Use it for the whole app, ``FastAPI(dependencies=[Depends(tenant_header())])``, or per
    route. Model calls made for the request are then checked against and charged to that
    tenant's budgets (see :mod:`llm_server.core.budgets`). Trust the header only behind a
    gateway that sets it (or write your own dependency that calls
    :func:`~llm_server.core.budgets.set_tenant` with the id your authentication found): a
    caller who may set it can name any tenant, or a new one each time, and a new tenant gets
    the ``"*"`` budget afresh.

    Args:
        name: The header.
        required: Refuse requests without it (400 ``bad_input``); otherwise they run without
            a tenant, so no budget applies.
        max_length: The longest tenant id accepted.

    Returns:
        An async dependency (async, so the id it sets is seen by the endpoint). An id that
        :func:`validate_tenant_id` refuses gets 400 ``bad_input``.
    """

    async def tenant(request: Request) -> str | None:
        value = request.headers.get(name, "").strip()
        if not value:
            if required:
                raise InputError(f"the {name} header is required: it names the tenant")
            set_tenant(None)
            return None
        set_tenant(validate_tenant_id(value, max_length=max_length, source=f"{name} header"))
        return value

    return tenant


def tenant_usage_router(
    *,
    dependencies: Sequence[DependsParam],
    prefix: str = "",
    tags: list[str] | None = None,
) -> APIRouter:
    """``GET /tenants/{tenant_id}/usage``: a tenant's usage and budgets this UTC day and month.

    Usage is per tenant, so the route runs ``dependencies`` (your authentication) first, as
    :func:`~llm_server.fastapi.add_playground` does: say who may read it. ``dependencies=[]``
    serves it to anyone who can reach the app (what ``health_router()`` did before).
    Include it with ``app.include_router(tenant_usage_router(dependencies=[Depends(auth)]))``.

    Args:
        dependencies: FastAPI dependencies the route runs first (required: your auth).
        prefix: A path prefix (e.g. ``"/admin"``).
        tags: OpenAPI tags (default ``["llm-server"]``).
    """
    router = APIRouter(
        prefix=prefix, tags=list(tags or ["llm-server"]), dependencies=list(dependencies)
    )

    @router.get("/tenants/{tenant_id}/usage", response_model=TenantUsage, responses=_NOT_READY)
    async def tenant_usage(tenant_id: str, request: Request) -> TenantUsage | JSONResponse:
        validate_tenant_id(tenant_id)
        manager = getattr(request.app.state, "model_manager", None)
        if manager is None:
            return _not_ready("models are not built")
        periods = {
            period: PeriodUsage(
                requests=used.requests,
                tokens=used.tokens,
                cost_usd=round(used.cost_usd, 6),
                budget_requests=budget.requests,
                budget_tokens=budget.tokens,
                budget_cost_usd=budget.cost_usd,
            )
            for period, (used, budget) in (await manager.budgets.usage(tenant_id)).items()
        }
        fleet = manager.fleet
        return TenantUsage(
            tenant=tenant_id,
            periods=periods,
            shared=fleet is not None and not fleet.connection.fallback,
        )

    return router
