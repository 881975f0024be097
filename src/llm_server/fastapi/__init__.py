"""FastAPI integration: lifespan, dependencies, error envelope, health router, program routes.

A whole service in a few lines::

    import dspy
    from fastapi import FastAPI
    from llm_server.fastapi import (
        RequestContextMiddleware, add_program_endpoint, health_router,
        install_error_handlers, llm_server_lifespan,
    )

    class Summarize(dspy.Signature):
        text: str = dspy.InputField()
        summary: str = dspy.OutputField()

    app = FastAPI(lifespan=llm_server_lifespan(programs=[Summarize]))
    install_error_handlers(app)
    app.add_middleware(RequestContextMiddleware)
    app.include_router(health_router())
    add_program_endpoint(app, "summarize", signature=Summarize, default_model_id="gpt-4o-mini")

The same programs can also be reached by any OpenAI chat-completions client
(``add_openai_routes``) and by MCP clients as tools (``add_mcp_tools``, the ``mcp`` extra).

Hosts can still write their routes by hand, reading the managers with
``Depends(get_program_manager)`` / ``Depends(get_model_manager)``.
"""

from __future__ import annotations

from llm_server.fastapi._endpoints import add_program_endpoint
from llm_server.fastapi._errors import error_response, install_error_handlers
from llm_server.fastapi._lifespan import HostLifespan, ProgramSpec, llm_server_lifespan
from llm_server.fastapi._mcp import add_mcp_tools
from llm_server.fastapi._middleware import BodyLimitMiddleware, RequestContextMiddleware
from llm_server.fastapi._openai import add_openai_routes
from llm_server.fastapi._playground import add_playground
from llm_server.fastapi._release_routes import add_release_routes
from llm_server.fastapi._router import health_router
from llm_server.fastapi._schemas import ErrorBody, ErrorEnvelope
from llm_server.fastapi._signature_models import signature_models
from llm_server.fastapi._sse import sse_response
from llm_server.fastapi._state import get_model_manager, get_program_manager, get_settings
from llm_server.fastapi._tenants import tenant_header, tenant_usage_router, validate_tenant_id

__all__ = [
    "BodyLimitMiddleware",
    "ErrorBody",
    "ErrorEnvelope",
    "HostLifespan",
    "ProgramSpec",
    "RequestContextMiddleware",
    "add_mcp_tools",
    "add_openai_routes",
    "add_playground",
    "add_program_endpoint",
    "add_release_routes",
    "error_response",
    "get_model_manager",
    "get_program_manager",
    "get_settings",
    "health_router",
    "install_error_handlers",
    "llm_server_lifespan",
    "signature_models",
    "sse_response",
    "tenant_header",
    "tenant_usage_router",
    "validate_tenant_id",
]
