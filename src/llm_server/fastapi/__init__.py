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

Hosts can still write their routes by hand, reading the managers with
``Depends(get_program_manager)`` / ``Depends(get_model_manager)``.
"""

from __future__ import annotations

from llm_server.fastapi._endpoints import add_program_endpoint, signature_models
from llm_server.fastapi._errors import error_response, install_error_handlers
from llm_server.fastapi._lifespan import HostLifespan, ProgramSpec, llm_server_lifespan
from llm_server.fastapi._middleware import BodyLimitMiddleware, RequestContextMiddleware
from llm_server.fastapi._playground import add_playground
from llm_server.fastapi._release_routes import add_release_routes
from llm_server.fastapi._router import health_router
from llm_server.fastapi._schemas import ErrorBody, ErrorEnvelope
from llm_server.fastapi._sse import sse_response
from llm_server.fastapi._state import get_model_manager, get_program_manager, get_settings
from llm_server.fastapi._tenants import tenant_header

__all__ = [
    "BodyLimitMiddleware",
    "ErrorBody",
    "ErrorEnvelope",
    "HostLifespan",
    "ProgramSpec",
    "RequestContextMiddleware",
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
]
