"""Per-request context: an execution id, JSON-log fields and one trace per request."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llm_server.core.errors import PayloadTooLargeError
from llm_server.core.metadata import new_execution_id
from llm_server.core.telemetry._logging import log_context
from llm_server.core.telemetry._otel import get_telemetry
from llm_server.fastapi._errors import error_response, framework_error_response, log_unexpected
from llm_server.fastapi._gate import (
    GATED,
    VALIDATED,
    body_limit,
    read_body,
    registered_gate,
    replaying,
    too_large,
)

__all__ = ["BodyLimitMiddleware", "RequestContextMiddleware"]

_HEADER = b"x-execution-id"


class RequestContextMiddleware:
    """Give each HTTP request an execution id, a log context and a request span.

    The execution id (the caller's ``X-Execution-ID`` header when it is a plausible id,
    8-64 letters, digits, ``-`` or ``_``; else a new UUID) is echoed in the ``X-Execution-ID``
    response header, carried by every JSON log line
    (:func:`~llm_server.core.telemetry.configure_json_logging`) and used as the envelope's
    ``execution_id``, success or error. With telemetry on, the request runs in one span, so
    the envelope's ``trace_id`` is the request's trace. An exception no handler turned into a
    response is answered with a 500 error envelope and logged (redacted) here, so clients
    never see a traceback. A request to a program route whose model's breakers (and its
    fallbacks') would all refuse it is refused here, before FastAPI routes it (see
    :func:`~llm_server.fastapi.add_program_endpoint`). Install with
    ``app.add_middleware(RequestContextMiddleware)``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        execution_id = _incoming_id(scope) or new_execution_id()
        header = (_HEADER, execution_id.encode("ascii"))
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        # HTTP semantic conventions: "{method}" when the route is not known yet (it is
        # matched after this middleware runs); a raw path would be high-cardinality.
        span_name = str(scope.get("method", "HTTP"))
        with log_context(execution_id=execution_id):
            registered = registered_gate(scope)
            if registered is not None:  # a program route: an oversized body or an open
                gate, limit = registered  # breaker is refused right here, before routing
                try:
                    oversized = too_large(Headers(scope=scope), limit)
                    if oversized is not None:
                        raise oversized
                    body = await read_body(receive, limit)
                except PayloadTooLargeError as exc:
                    await framework_error_response(exc)(scope, receive, send_with_id)
                    return
                passed = gate(body, scope["app"])
                if isinstance(passed, Response):
                    await passed(scope, receive, send_with_id)
                    return
                scope = {**scope, GATED: True, VALIDATED: passed}
                receive = replaying(body, receive)
            with get_telemetry().request_span(span_name):
                try:
                    await self.app(scope, receive, send_with_id)
                except Exception as exc:
                    if started:  # too late for an error response; let the server close it
                        raise
                    log_unexpected(exc)
                    response = error_response(500, "internal_error", "internal server error")
                    await response(scope, receive, send_with_id)


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == _HEADER:
            text = bytes(value).decode("latin-1").strip()
            if 8 <= len(text) <= 64 and all(
                c.isascii() and (c.isalnum() or c in "-_") for c in text
            ):
                return text
    return None


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413 and the error envelope, on any route.

    The library's program routes bound their bodies themselves; put this around an app (or
    mount) to bound your own routes too: ``app.add_middleware(BodyLimitMiddleware,
    max_bytes=1_000_000)``. A ``Content-Length`` over the limit is refused before anything is
    read; otherwise the bytes are counted as the app reads them, and the first chunk past the
    limit ends the request with 413 (nothing more is read).

    Args:
        app: The ASGI app to wrap.
        max_bytes: The limit (default: the ``LLM_SERVER_MAX_REQUEST_BYTES`` setting, 2 MiB).
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes if max_bytes is not None else body_limit(None, None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        refusal = too_large(Headers(scope=scope), limit)
        if refusal is not None:
            await framework_error_response(refusal)(scope, receive, send)
            return
        size = 0
        started = responded = False

        async def counting() -> Message:
            nonlocal size, responded
            message = await receive()
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit:
                    if not started and not responded:
                        # Answered here: the app would turn any error raised from its body
                        # read into its own 400; what it answers afterwards is dropped.
                        responded = True
                        error = too_large({"content-length": str(size)}, limit)
                        assert error is not None
                        await framework_error_response(error)(scope, receive, send)
                    raise _BodyOverflowError
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            if responded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting, tracking)
        except _BodyOverflowError:
            if not responded:
                raise


class _BodyOverflowError(Exception):
    """Raised from ``receive`` once the body passed the limit and the 413 went out."""
