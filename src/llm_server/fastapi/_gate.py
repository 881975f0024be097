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
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic_core import from_json
from starlette.types import Message, Receive, Scope

from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import (
    CircuitOpenError,
    InputError,
    LLMServerError,
    PayloadTooLargeError,
)
from llm_server.fastapi._errors import framework_error_response, validation_error_response

__all__ = [
    "GATED",
    "GATES",
    "VALIDATED",
    "Gate",
    "body_limit",
    "gate_for",
    "guarded_route",
    "json_depth_limit",
    "read_body",
    "registered_gate",
    "replaying",
    "too_deep",
    "too_large",
]

Gate = Callable[[bytes, Any], Response | BaseModel | None]
"""``gate(body, app)``: the error response for this request, or what lets it through: the body
as validated (a model instance), or ``None`` when the route must decide (malformed JSON)."""
GATES = "llm_server_gates"
"""The ``app.state`` attribute holding ``{path: (gate, body limit)}`` for the middleware."""
GATED = "llm_server.gated"
"""Set in the ASGI scope once a gate let the request through (not asked twice)."""
VALIDATED = "llm_server.validated_body"
"""The ASGI scope key of the body a gate validated (``None`` when it could not)."""


def gate_for(
    route: Callable[[Any, str], Any],
    *,
    request_model: type[BaseModel],
    default_model_id: str,
    manager: Any | None,
) -> Gate:
    """The gate of one program route.

    It refuses a request every breaker the call could use would refuse (503), then a body
    its schema calls invalid: the body is validated strictly, as JSON Schema reads the
    OpenAPI document (``false`` is no integer, ``"1"`` no number, at any depth), where
    FastAPI's own validation is lax (422, the same envelope). A request it lets through comes
    with its validated body (``None`` for malformed JSON, which the route answers).

    Args:
        route: ``route(program_manager, model_id)``: the route's cached pipeline and checks.
        request_model: The route's request body model.
        default_model_id: The model used when the body names none.
        manager: The program manager the route was given, else ``app.state``'s is used.
    """

    def gate(body: bytes, app: Any) -> Response | BaseModel | None:
        deep = too_deep(body, json_depth_limit(app))
        if deep is not None:
            return framework_error_response(deep)
        sent = _parsed(body)
        if sent is _MALFORMED:
            return None  # the route answers malformed JSON (400) as usual
        model_id = sent.get("model_id", default_model_id) if isinstance(sent, dict) else None
        pm = manager if manager is not None else getattr(app.state, "program_manager", None)
        if isinstance(model_id, str) and pm is not None:
            try:
                route(pm, model_id).ensure_available()
            except CircuitOpenError as exc:
                return framework_error_response(exc)
            except LLMServerError:
                pass  # e.g. an unknown model: the route answers it with its usual envelope
        try:
            return request_model.model_validate_json(body, strict=True)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False)
            return validation_error_response(
                [{**error, "loc": ("body", *error["loc"])} for error in errors]
            )

    return gate


_MALFORMED = object()
_JITER_INT_DIGITS = 4300  # the longest integer pydantic-core's parser reads


def _parsed(body: bytes) -> Any:
    """The JSON value of ``body`` as ``json.loads`` reads it, else ``_MALFORMED``.

    pydantic-core's parser first (a tenth of ``json.loads``'s cost on a small body); a body it
    refuses, which ``json.loads`` may still read (UTF-16 or UTF-32, a byte-order mark, a lone
    surrogate escape, nesting past its limit of ~200 levels), goes to ``json.loads``, so the
    gate decides what it decided with ``json.loads`` alone. pydantic-core reads integers of up
    to 4,300 digits, Python's default limit; under a lower limit
    (``sys.set_int_max_str_digits``, ``PYTHONINTMAXSTRDIGITS``) ``json.loads`` reads every body.
    """
    if not 0 < sys.get_int_max_str_digits() < _JITER_INT_DIGITS:
        try:
            return from_json(body)
        except ValueError:
            pass
    try:
        return json.loads(body)
    except ValueError:
        return _MALFORMED


def guarded_route(
    gate: Gate,
    *,
    max_request_bytes: int | None,
    direct: Callable[[Request, Any], Awaitable[Response]] | None = None,
) -> type[APIRoute]:
    """An ``APIRoute`` class that bounds the body, consults ``gate`` first and registers both
    for the middleware.

    Args:
        gate: The route's gate.
        max_request_bytes: The route's body limit (``None``: the app's settings, else the
            settings' default).
        direct: ``endpoint(request, body)`` of a route that answers with a ``Response`` and
            needs nothing else from FastAPI: called with the body the gate validated, so
            FastAPI does not read, parse and validate it a second time (a body the gate could
            not validate, or a route with dependencies, still goes through FastAPI).
    """

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            # A route with dependencies (the app's, a router's or its own: authentication,
            # the tenant whose budget is charged) always goes through FastAPI, which runs them.
            bypass = direct if not self.dependant.dependencies else None

            async def guarded(request: Request) -> Response:
                validated = request.scope.get(VALIDATED)
                if not request.scope.get(GATED):
                    limit = body_limit(request.app, max_request_bytes)
                    gates = getattr(request.app.state, GATES, None)
                    if gates is None:
                        gates = {}
                        setattr(request.app.state, GATES, gates)
                    gates.setdefault(request.scope["path"], (gate, limit))
                    try:
                        oversized = too_large(request.headers, limit)
                        if oversized is not None:
                            raise oversized
                        body = await read_body(request.receive, limit)
                    except PayloadTooLargeError as exc:
                        return framework_error_response(exc)
                    # Starlette keeps a read body here; the endpoint's parsing reads it back.
                    request._body = body
                    passed = gate(body, request.app)
                    if isinstance(passed, Response):
                        return passed
                    validated = passed
                if bypass is not None and validated is not None:
                    return await bypass(request, validated)
                return await handler(request)

            return guarded

    return GuardedRoute


def body_limit(app: Any, max_request_bytes: int | None) -> int:
    """The route's own limit, else the app's settings', else the default setting's."""
    if max_request_bytes is not None:
        return max_request_bytes
    settings = getattr(getattr(app, "state", None), "settings", None)
    limit = getattr(settings, "max_request_bytes", None)
    if isinstance(limit, int):
        return limit
    return int(FrameworkSettings.model_fields["max_request_bytes"].default)


def json_depth_limit(app: Any) -> int:
    """The app's settings' ``max_json_depth``, else the default setting's."""
    settings = getattr(getattr(app, "state", None), "settings", None)
    limit = getattr(settings, "max_json_depth", None)
    if isinstance(limit, int):
        return limit
    return int(FrameworkSettings.model_fields["max_json_depth"].default)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_SQUARE = bytes.maketrans(b"{}", b"[]")  # one kind of pair: one level per round


def too_deep(body: bytes, limit: int) -> InputError | None:
    """The refusal of a JSON body whose arrays and objects nest deeper than ``limit``.

    Checked on the bytes, before any parser recurses into them (Python's ``json`` raises
    ``RecursionError`` on a 100,000-deep array), in linear time: a body with no more than
    ``limit`` opening brackets cannot be too deep and is not scanned; otherwise (a UTF-16 or
    UTF-32 body, which ``json`` reads too, re-encoded as UTF-8 first) escapes are dropped,
    strings cut out (between unescaped quotes), and ``limit`` rounds each remove the innermost
    empty pairs of what is left: anything left over nests deeper than ``limit`` (or its
    brackets do not match, which is no JSON either).
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    encoding = json.detect_encoding(body)
    if encoding not in ("utf-8", "utf-8-sig"):
        # json reads UTF-16 and UTF-32 bodies too, where a backslash is not next to the
        # quote it escapes: scan the text json will read, as UTF-8.
        try:
            body = body.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")
        except UnicodeError:
            return None  # json cannot decode it either: refused as malformed, unparsed
    # Backslash pairs first (left to right pairs them as JSON does), then escaped quotes:
    # every quote left opens or closes a string.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside_strings = b"".join(unescaped.split(b'"')[::2])
    brackets = outside_strings.translate(_AS_SQUARE, _NOT_BRACKETS)
    for _ in range(limit):
        inner = brackets.replace(b"[]", b"")
        if not inner:
            return None
        if inner == brackets:
            break  # nothing to remove: brackets that do not match
        brackets = inner
    return InputError(
        f"request body nested more than {limit} levels deep (arrays and objects), or its "
        f"brackets do not match; at most {limit} levels are accepted "
        "(LLM_SERVER_MAX_JSON_DEPTH)"
    )


def too_large(headers: Any, limit: int) -> PayloadTooLargeError | None:
    """The refusal of a request whose ``Content-Length`` already says it is over ``limit``."""
    declared = headers.get("content-length") if headers is not None else None
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _over(limit, f"{int(declared):,} bytes declared")
    return None


def _over(limit: int, what: str) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"request body too large: {what}; this endpoint accepts at most {limit:,} bytes "
        "(LLM_SERVER_MAX_REQUEST_BYTES, or max_request_bytes= on the endpoint)"
    )


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, read from ``receive``, refused once it passes ``limit`` bytes.

    Nothing past the chunk that crossed the limit is read, so an oversized body costs at most
    ``limit`` plus one chunk of memory.

    Raises:
        PayloadTooLargeError: The body is longer than ``limit``.
    """
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # a disconnect: what was read is all there is
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _over(limit, f"more than {limit:,} bytes sent")
        chunks.append(chunk)
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


def registered_gate(scope: Scope) -> tuple[Gate, int] | None:
    """The gate and body limit registered for this request's path (POSTs to program routes)."""
    if scope.get("method") != "POST":
        return None
    app = scope.get("app")
    gates = getattr(getattr(app, "state", None), GATES, None)
    return gates.get(scope["path"]) if gates else None
