"""Programs as MCP tools over streamable HTTP, mounted in the host's FastAPI app.

Built on the official MCP Python SDK (the ``mcp`` extra), imported only when
:func:`add_mcp_tools` is called.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from starlette.types import Receive, Scope, Send

from llm_server.core.errors import ConfigurationError, LLMServerError
from llm_server.core.metadata import new_execution_id
from llm_server.core.telemetry._logging import current_execution_id, log_context
from llm_server.core.telemetry._redaction import redact
from llm_server.fastapi._errors import log_unexpected
from llm_server.fastapi._served import ServedProgram, served_programs

if TYPE_CHECKING:
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

__all__ = ["add_mcp_tools"]

logger = logging.getLogger("llm_server.fastapi")

META_VERSION = "llm-server/program_version"
"""The ``_meta`` key of a tool result naming the program version that answered."""
META_EXECUTION_ID = "llm-server/execution_id"
"""The ``_meta`` key of a tool result holding the call's execution id (as in the logs)."""
META_USAGE = "llm-server/usage"
"""The ``_meta`` key of a tool error holding what the call was billed before it failed (the
error envelope's ``usage``), when anything was."""


class _Handled(Response):
    """A response that hands the request to an ASGI callable (the MCP transport)."""

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self._handle = handle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._handle(scope, receive, send)


def _tool_error(text: str, usage: dict[str, Any] | None = None) -> Any:
    import mcp_types

    return mcp_types.CallToolResult(
        content=[mcp_types.TextContent(text=redact(text))],
        is_error=True,
        _meta={META_USAGE: usage} if usage else None,
    )


def add_mcp_tools(
    app: FastAPI,
    *,
    programs: Mapping[str, Any],
    default_model_id: str,
    path: str = "/mcp",
    dependencies: Sequence[Any] | None = None,
    name: str = "llm-server",
) -> None:
    """Serve programs as MCP tools at ``path`` (streamable HTTP), behind ``dependencies``.

    Each program becomes a tool named by its id: its input schema is the JSON schema of the
    program route's request model (the signature's inputs plus an optional ``model_id``), its
    output schema that of the route's response data (the outputs), and a call returns the
    outputs as ``structuredContent`` (and as JSON text), with the program version that
    answered and the execution id in its ``_meta`` (``llm-server/program_version``,
    ``llm-server/execution_id``). A call runs exactly like a request to
    the program route (the served version, the composed model stack with its breaker, retries
    and deadline, the tenant's budgets, exact tokens). Arguments that do not fit the schema and
    failed calls (an open breaker, a provider failing) come back as a tool error
    (``isError``) naming the problem, so the calling agent can see it; one billed before it
    failed carries that usage in its ``_meta`` (``llm-server/usage``).

    The server is stateless (every HTTP request stands alone, so any worker can answer it) and
    answers in JSON; its session manager runs inside the app's lifespan. Dependencies run for
    every MCP request (authentication, :func:`~llm_server.fastapi.tenant_header`); they must
    not read the body, which the MCP transport reads.

    Uses the official MCP Python SDK (install the ``mcp`` extra:
    ``pip install "llm-server-framework[mcp]"``).

    Args:
        app: The app (its lifespan registers the programs: ``llm_server_lifespan``).
        programs: Program id -> its signature, or its module class (a module with exactly one
            predictor), as ``add_program_endpoint`` takes it.
        default_model_id: The model a call runs on when its arguments name none.
        path: Where the MCP endpoint is mounted.
        dependencies: FastAPI dependencies run for every MCP request.
        name: The server name announced to clients.

    Raises:
        ConfigurationError: The ``mcp`` package is missing, there are no programs, or a
            signature cannot be expressed as JSON.
    """
    try:
        import mcp_types
        from mcp.server.lowlevel import Server
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    except ImportError as exc:
        raise ConfigurationError(
            'add_mcp_tools needs the MCP SDK: pip install "llm-server-framework[mcp]"'
        ) from exc
    served = served_programs(programs, default_model_id=default_model_id)
    tools = [
        mcp_types.Tool(
            name=program.program_id,
            description=program.description,
            input_schema=program.request_model.model_json_schema(),
            output_schema=program.data_model.model_json_schema(),
        )
        for program in served.values()
    ]

    async def list_tools(ctx: Any, params: Any) -> Any:
        return mcp_types.ListToolsResult(tools=tools)

    async def call_tool(ctx: Any, params: Any) -> Any:
        program = served.get(params.name)
        if program is None:
            return _tool_error(f"unknown tool {params.name!r}: the tools are {', '.join(served)}")
        return await _call(app, program, params.arguments or {})

    server: Any = Server(name, on_list_tools=list_tools, on_call_tool=call_tool)
    running: dict[str, StreamableHTTPSessionManager] = {}
    host_lifespan = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(host: Any) -> AsyncIterator[Any]:
        # A session manager runs once: a new one for every run of the app's lifespan.
        manager = StreamableHTTPSessionManager(server, stateless=True, json_response=True)
        async with host_lifespan(host) as state, manager.run():
            running["manager"] = manager
            try:
                yield state
            finally:
                running.pop("manager", None)

    app.router.lifespan_context = lifespan

    async def endpoint(request: Request) -> Response:
        manager = running.get("manager")
        if manager is None:
            raise ConfigurationError("the MCP tools are not running: the app's lifespan is not")
        return _Handled(manager.handle_request)

    app.router.add_api_route(
        path,
        endpoint,
        methods=["GET", "POST", "DELETE"],
        dependencies=list(dependencies or []),
        include_in_schema=False,
        name="mcp_tools",
    )


async def _call(app: FastAPI, program: ServedProgram, arguments: Mapping[str, Any]) -> Any:
    """Run one tool call as the program route runs a request; a tool error when it fails."""
    import mcp_types

    try:
        body = program.request_model.model_validate_json(json.dumps(arguments), strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        return _tool_error(f"invalid arguments for {program.program_id!r}: {problems}")
    execution_id = current_execution_id() or new_execution_id()
    try:
        with log_context(execution_id=execution_id):
            manager = getattr(app.state, "program_manager", None)
            if manager is None:
                raise ConfigurationError("the programs are not registered yet (lifespan)")
            model_id: str = getattr(body, "model_id")  # noqa: B009 -- a field of the built model
            picked = program.pick(manager, None, None)  # a running canary's share too
            route = program.route(manager, model_id, picked=picked)
            route.ensure_available()
            env = await program.run(manager, route, body, picked=picked)
    except LLMServerError as exc:
        if exc.http_status >= 500:
            logger.warning("tool call failed: %s: %s", exc.error_type, redact(exc.message))
        return _tool_error(f"{exc.error_type}: {exc.message}", exc.request_usage)
    except Exception as exc:
        log_unexpected(exc)
        return _tool_error("internal_error: internal server error")
    data = program.data_model.model_validate(env["data"]).model_dump(mode="json")
    return mcp_types.CallToolResult(
        content=[mcp_types.TextContent(text=json.dumps(data, ensure_ascii=False))],
        structured_content=data,
        _meta={
            META_VERSION: str(route.program_metadata.version),
            META_EXECUTION_ID: execution_id,
        },
    )
