"""Refusing requests an open circuit breaker would refuse, before any work is done (private).

A program route's *gate* reads ``model_id`` from the raw JSON body (or the route's default)
and asks the model manager whether every breaker the call could use would refuse it
(:meth:`~llm_server.models.manager.ModelManager.ensure_available`). Two places consult it:

- the route itself (:class:`GuardedRoute`), before FastAPI solves dependencies, validates
  the body and runs the endpoint; it then registers its gate on the app under its path;
- :class:`~llm_server.fastapi.RequestContextMiddleware`, which consults registered gates
  before the request reaches FastAPI's router at all.

A refused request then costs the HTTP exchange and a JSON peek (``benchmarks/e2e/
reliability.py`` measures it against a served request). Anything the gate cannot decide
(malformed JSON, an unknown model, no program manager yet) goes on to the route, which
answers it as usual.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope

from llm_server.core.errors import CircuitOpenError, LLMServerError
from llm_server.fastapi._errors import framework_error_response

__all__ = [
    "GATED",
    "GATES",
    "Gate",
    "gate_for",
    "guarded_route",
    "read_body",
    "registered_gate",
    "replaying",
]

Gate = Callable[[bytes, Any], CircuitOpenError | None]
"""``gate(body, app)``: the refusal for this request, or ``None`` to let it through."""
GATES = "llm_server_gates"
"""The ``app.state`` attribute holding ``{path: gate}`` for the middleware."""
GATED = "llm_server.gated"
"""Set in the ASGI scope once a gate let the request through (not asked twice)."""


def gate_for(
    route: Callable[[Any, str], Any], *, default_model_id: str, manager: Any | None
) -> Gate:
    """The gate of one program route.

    Args:
        route: ``route(program_manager, model_id)``: the route's cached pipeline and checks.
        default_model_id: The model used when the body names none.
        manager: The program manager the route was given, else ``app.state``'s is used.
    """

    def gate(body: bytes, app: Any) -> CircuitOpenError | None:
        try:
            sent = json.loads(body)
        except ValueError:
            return None
        model_id = sent.get("model_id", default_model_id) if isinstance(sent, dict) else None
        pm = manager if manager is not None else getattr(app.state, "program_manager", None)
        if not isinstance(model_id, str) or pm is None:
            return None
        try:
            route(pm, model_id).ensure_available()
        except CircuitOpenError as exc:
            return exc
        except LLMServerError:
            return None  # e.g. an unknown model: the route answers it with its usual envelope
        return None

    return gate


def guarded_route(gate: Gate) -> type[APIRoute]:
    """An ``APIRoute`` class that consults ``gate`` first and registers it for the middleware."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                if not request.scope.get(GATED):
                    gates = getattr(request.app.state, GATES, None)
                    if gates is None:
                        gates = {}
                        setattr(request.app.state, GATES, gates)
                    gates.setdefault(request.scope["path"], gate)
                    refusal = gate(await request.body(), request.app)
                    if refusal is not None:
                        return framework_error_response(refusal)
                return await handler(request)

            return guarded

    return GuardedRoute


async def read_body(receive: Receive) -> bytes:
    """The whole request body, read from ``receive``."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # a disconnect: what was read is all there is
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands ``body`` over once, then defers to ``receive``."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def registered_gate(scope: Scope) -> Gate | None:
    """The gate registered for this request's path, if it is a POST to a program route."""
    if scope.get("method") != "POST":
        return None
    app = scope.get("app")
    gates = getattr(getattr(app, "state", None), GATES, None)
    return gates.get(scope["path"]) if gates else None
