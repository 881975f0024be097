"""Exception handlers turning errors into the error envelope.

``{"success": false, "error": {"type": ..., "message": ...}, "execution_id": ...}`` with the
status each :class:`~llm_server.core.errors.LLMServerError` subclass declares; ``Retry-After``
on 503 (open circuit) and 429 (rate limited). Unexpected exceptions become a 500 envelope
without a traceback; messages are redacted so no provider key ever reaches a client.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_server.core.errors import CircuitOpenError, LLMServerError, RateLimitedError
from llm_server.core.metadata import new_execution_id
from llm_server.core.redaction import redact

__all__ = ["error_response", "install_error_handlers"]

logger = logging.getLogger("llm_server.fastapi")


def _execution_id() -> str:
    try:
        from llm_server.core.logging import current_execution_id

        return current_execution_id() or new_execution_id()
    except Exception:  # the logging context is optional
        return new_execution_id()


def error_response(
    status_code: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, object]] | None = None,
) -> JSONResponse:
    """Build an error envelope response (messages are redacted)."""
    error: dict[str, object] = {"type": error_type, "message": redact(message)}
    if details:
        error["details"] = details
    body = {"success": False, "error": error, "execution_id": _execution_id()}
    return JSONResponse(body, status_code=status_code, headers=headers)


def _retry_after(seconds: float | None) -> dict[str, str] | None:
    if seconds is None:
        return None
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _framework_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LLMServerError)
    headers = None
    if isinstance(exc, CircuitOpenError | RateLimitedError):
        headers = _retry_after(exc.retry_after_s)
    if exc.http_status >= 500:
        logger.warning("request failed: %s: %s", exc.error_type, redact(exc.message))
    details = getattr(exc, "errors", None) or None
    return error_response(
        exc.http_status, exc.error_type, exc.message, headers=headers, details=details
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    fields = ", ".join(".".join(str(p) for p in e.get("loc", ())) for e in exc.errors())
    return error_response(422, "invalid_request", f"invalid request: {fields}", details=details)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(
        exc.status_code,
        "http_error",
        str(exc.detail),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error: %s: %s", type(exc).__name__, redact(str(exc)))
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Install the error envelope handlers on ``app`` (one call, idempotent)."""
    app.add_exception_handler(LLMServerError, _framework_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
