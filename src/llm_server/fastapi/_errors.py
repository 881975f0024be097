"""Exception handlers turning errors into the error envelope.

``{"success": false, "error": {"type": ..., "message": ...}, "execution_id": ...}`` (plus
``usage`` when the request was billed before it failed) with the status each
:class:`~llm_server.core.errors.LLMServerError` subclass declares (its ``http_status``) and
``Retry-After`` on 503 (open circuit) and 429 (rate limited). Request validation errors become
422 envelopes listing the fields, Starlette/FastAPI HTTP errors keep their status, and
anything unexpected becomes a 500 envelope without a traceback. Messages
are redacted, so no provider key ever reaches a client.
"""

from __future__ import annotations

import http
import logging
import math
import traceback
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic_core import to_json
from starlette.exceptions import HTTPException as StarletteHTTPException

from llm_server.core.errors import CircuitOpenError, LLMServerError, RateLimitedError
from llm_server.core.metadata import new_execution_id
from llm_server.core.telemetry._logging import current_execution_id
from llm_server.core.telemetry._redaction import redact, redact_value

__all__ = ["error_response", "install_error_handlers", "log_unexpected"]

logger = logging.getLogger("llm_server.fastapi")

# When a provider sends no Retry-After, clients still get a hint rather than none.
_DEFAULT_RETRY_AFTER_S = 1.0
_REFUSALS = (CircuitOpenError, RateLimitedError)


def error_response(
    status_code: int,
    error_type: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> JSONResponse:
    """Build an error envelope response (the message, details and usage redacted, every string
    at any depth).

    The ``execution_id`` is the current request's (set by
    :class:`~llm_server.fastapi.RequestContextMiddleware`), else a new one.

    Args:
        status_code: The HTTP status.
        error_type: The stable ``error.type``.
        message: The ``error.message``.
        headers: Extra response headers (e.g. ``Retry-After``).
        details: Per-field problems (``error.details``).
        usage: What the request was billed before it failed (the envelope's ``usage``:
            tokens, cost, method, ``calls`` and ``answer_attempts``), when anything was.
    """
    body = error_envelope(error_type, message, details=details, usage=usage)
    return EnvelopeResponse(body, status_code=status_code, headers=headers)


class EnvelopeResponse(JSONResponse):
    """A ``JSONResponse`` rendered by pydantic-core's encoder, as FastAPI renders the success
    envelopes of routes with a response model.

    Compact UTF-8 JSON, as ``JSONResponse`` writes it, at a fraction of ``json.dumps``'s cost
    (a refused request renders one on the path a circuit breaker keeps cheap). Floats are
    written as pydantic-core writes them (``0.000015`` and ``1e-7``, where ``json.dumps``
    writes ``1.5e-05`` and ``1e-07``: the same numbers to a parser); a NaN or an infinity,
    which no JSON parser must accept, becomes ``null`` (``JSONResponse`` would fail the
    response instead).
    """

    def render(self, content: Any) -> bytes:
        return to_json(content, inf_nan_mode="null")


def error_envelope(
    error_type: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The error envelope's body (redacted), as :func:`error_response` sends it."""
    error: dict[str, Any] = {"type": error_type, "message": redact(message)}
    if details:
        error["details"] = [redact_value(item) for item in details]
    body: dict[str, Any] = {
        "success": False,
        "error": error,
        "execution_id": current_execution_id() or new_execution_id(),
    }
    if usage:
        body["usage"] = redact_value(usage)
    return body


def _retry_after(seconds: float | None) -> dict[str, str]:
    # Retry-After takes whole seconds; round up so a client never comes back too early.
    value = _DEFAULT_RETRY_AFTER_S if seconds is None else seconds
    return {"Retry-After": str(max(1, math.ceil(value)))}


def log_unexpected(exc: BaseException) -> None:
    """Log an unhandled exception with its traceback, redacted, for the operator."""
    text = "".join(traceback.format_exception(exc))
    logger.error("unhandled error: %s", redact(text))


async def _framework_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LLMServerError)
    return framework_error_response(exc)


def framework_error_response(exc: LLMServerError) -> JSONResponse:
    """The error envelope for one of our errors (status, ``Retry-After``, details), logged."""
    headers = None
    if isinstance(exc, _REFUSALS):
        headers = _retry_after(exc.retry_after_s)
        # Refusals are expected while a breaker is open: the breaker logs its transitions and
        # a periodic summary, never a line per refused request.
        if logger.isEnabledFor(logging.DEBUG):  # redacting costs more than the rest
            logger.debug("request refused: %s: %s", exc.error_type, redact(exc.message))
    elif exc.http_status >= 500:
        logger.warning("request failed: %s: %s", exc.error_type, redact(exc.message))
    details = getattr(exc, "errors", None)
    return error_response(
        exc.http_status,
        exc.error_type,
        exc.message,
        headers=headers,
        details=details if isinstance(details, list) else None,
        usage=exc.request_usage,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return validation_error_response(exc.errors())


def validation_error_response(errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """The 422 envelope for request validation errors (the rejected values are not repeated)."""
    details = [
        {"loc": [str(p) for p in e.get("loc", ())], "msg": e.get("msg", ""), "type": e.get("type")}
        for e in errors
    ]
    fields = ", ".join(".".join(d["loc"]) for d in details) or "body"
    return error_response(422, "invalid_request", f"invalid request: {fields}", details=details)


def _status_type(status_code: int) -> str:
    try:
        return http.HTTPStatus(status_code).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "http_error"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code >= 500:
        logger.warning("request failed: HTTP %d: %s", exc.status_code, redact(str(exc.detail)))
    return error_response(
        exc.status_code,
        _status_type(exc.status_code),
        str(exc.detail),
        headers=dict(exc.headers) if exc.headers else None,
    )


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log_unexpected(exc)
    return error_response(500, "internal_error", "internal server error")


def install_error_handlers(app: FastAPI) -> None:
    """Install the error envelope handlers on ``app`` (one call; calling it again is harmless).

    ==================================  ======  =========================================
    Exception                           Status  ``error.type``
    ==================================  ======  =========================================
    ``LLMServerError`` subclasses       theirs  their ``error_type`` (see core.errors)
    ``CircuitOpenError``                503     ``circuit_open`` + ``Retry-After``
    ``RateLimitedError``                429     ``rate_limited`` + ``Retry-After``
    request validation                  422     ``invalid_request`` + ``details``
    ``HTTPException``                   its     e.g. ``not_found``
    anything else                       500     ``internal_error`` (no traceback)
    ==================================  ======  =========================================

    Unexpected exceptions are handled by Starlette's outermost middleware, which re-raises
    them to the server after answering; with :class:`RequestContextMiddleware` installed they
    are answered (with the request's execution id) and logged, redacted, by the framework.
    """
    app.add_exception_handler(LLMServerError, _framework_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
