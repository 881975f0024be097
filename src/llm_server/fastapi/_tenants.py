"""Who the caller is: a request-scoped tenant id, for budgets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request

from llm_server.core.errors import InputError
from llm_server.core.reliability._budgets import set_tenant

__all__ = ["tenant_header"]


def tenant_header(
    name: str = "X-Tenant-ID", *, required: bool = False, max_length: int = 128
) -> Callable[[Request], Awaitable[str | None]]:
    """A dependency that reads the tenant id from a request header.

    Use it for the whole app, ``FastAPI(dependencies=[Depends(tenant_header())])``, or per
    route. Model calls made for the request are then checked against and charged to that
    tenant's budgets (see :mod:`llm_server.core.budgets`). Trust the header only behind a
    gateway that sets it (or write your own dependency that calls
    :func:`~llm_server.core.budgets.set_tenant` with the id your authentication found).

    Args:
        name: The header.
        required: Refuse requests without it (400 ``bad_input``); otherwise they run without
            a tenant, so no budget applies.
        max_length: The longest tenant id accepted.

    Returns:
        An async dependency (async, so the id it sets is seen by the endpoint).
    """

    async def tenant(request: Request) -> str | None:
        value = request.headers.get(name, "").strip()
        if not value:
            if required:
                raise InputError(f"the {name} header is required: it names the tenant")
            set_tenant(None)
            return None
        if len(value) > max_length or not value.isprintable():
            raise InputError(
                f"the {name} header must be printable and at most {max_length} characters"
            )
        set_tenant(value)
        return value

    return tenant
