"""Structured JSON logs with per-request context.

Nothing here runs on import: the library only *logs* (to ``llm_server`` and its children) and
never configures handlers unless the host app calls :func:`configure_json_logging`. After that,
each record is one JSON object per line::

    {"timestamp": "2025-08-01T10:30:00.123Z", "level": "INFO", "logger": "llm_server.models",
     "message": "model call finished", "execution_id": "4f1c...", "trace_id": "0af7...",
     "span_id": "b7ad...", "model_id": "gpt-4o-mini", "program_id": "predictor"}

The ids come from :func:`log_context`, which stores them in a ``contextvars.ContextVar``: they
survive ``await`` and are copied into tasks spawned inside the block, while concurrent requests
(each in its own task) never see each other's values. ``trace_id`` and ``span_id`` are those of
the active OpenTelemetry span; with no active span, ``trace_id`` is a random id fixed for the
``log_context`` block (the same one
:func:`~llm_server.core.opentelemetry_integration.current_trace_id` returns there), so log lines
and the response envelope still correlate. Secrets are masked by a
:class:`~llm_server.core.telemetry.RedactingFilter` on the handler.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

from llm_server.core._ids import random_hex128
from llm_server.core.telemetry._redaction import RedactingFilter, redact

__all__ = [
    "JsonFormatter",
    "LogContextFilter",
    "configure_json_logging",
    "current_execution_id",
    "get_log_context",
    "log_context",
]

LIBRARY_LOGGER = "llm_server"


@dataclass(frozen=True, slots=True)
class _Fields:
    execution_id: str | None = None
    model_id: str | None = None
    program_id: str | None = None
    trace_id: str | None = None  # the fallback id used when no span is recording


_EMPTY = _Fields()
_fields: ContextVar[_Fields] = ContextVar("llm_server_log_fields", default=_EMPTY)


@contextmanager
def log_context(
    *,
    execution_id: str | None = None,
    model_id: str | None = None,
    program_id: str | None = None,
) -> Iterator[None]:
    """Attach ids to every log record emitted inside the block (and its awaits and tasks).

    Nested blocks inherit the outer values and override only what they pass. The outermost
    block also fixes a random fallback trace id for the request.

    Args:
        execution_id: The request's execution id.
        model_id: The configured model id serving the request.
        program_id: The program serving the request.
    """
    outer = _fields.get()
    # built directly: dataclasses.replace costs more than the rest of a refused request's block
    token = _fields.set(
        _Fields(
            outer.execution_id if execution_id is None else execution_id,
            outer.model_id if model_id is None else model_id,
            outer.program_id if program_id is None else program_id,
            outer.trace_id if outer.trace_id is not None else random_hex128(),
        )
    )
    try:
        yield
    finally:
        _fields.reset(token)


def get_log_context() -> Mapping[str, str | None]:
    """The ids set by the enclosing :func:`log_context` blocks (``None`` where unset)."""
    fields = _fields.get()
    return {
        "execution_id": fields.execution_id,
        "model_id": fields.model_id,
        "program_id": fields.program_id,
    }


def current_execution_id() -> str | None:
    """The execution id set by the enclosing :func:`log_context`, if any."""
    return _fields.get().execution_id


def _fallback_trace_id() -> str | None:
    """The random trace id of the enclosing :func:`log_context`, if any (private API)."""
    return _fields.get().trace_id


class LogContextFilter(logging.Filter):
    """Stamps ``execution_id``, ``model_id``, ``program_id``, ``trace_id`` and ``span_id`` on
    each record, in the thread and context that logged it (so a queue handler still sees them).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Add the context fields to ``record``; never drops it."""
        fields = _fields.get()
        record.execution_id = fields.execution_id
        record.model_id = fields.model_id
        record.program_id = fields.program_id
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id = fields.trace_id
            record.span_id = None
        return True


# Attributes every LogRecord has; anything else was passed through ``extra=``.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "execution_id",
    "model_id",
    "program_id",
    "trace_id",
    "span_id",
}


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line.

    Keys: ``timestamp`` (ISO 8601, UTC, milliseconds), ``level``, ``logger``, ``message``,
    ``execution_id``, ``trace_id``, ``span_id``, ``model_id``, ``program_id``, then
    ``exception`` and ``stack`` when present, then any ``extra=`` fields (strings redacted,
    other values as JSON or their ``str``).
    """

    def format(self, record: logging.LogRecord) -> str:
        """Return the JSON line for ``record``."""
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        payload: dict[str, Any] = {
            "timestamp": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
            "execution_id": getattr(record, "execution_id", None),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            "model_id": getattr(record, "model_id", None),
            "program_id": getattr(record, "program_id", None),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            payload["exception"] = redact(record.exc_text)
        if record.stack_info:
            payload["stack"] = redact(self.formatStack(record.stack_info))
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                payload[key] = _jsonable(value)
        return json.dumps(payload, ensure_ascii=False, default=str)


def _jsonable(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


_HANDLER_MARK = "_llm_server_json_handler"


def configure_json_logging(
    *,
    level: int | str = logging.INFO,
    stream: IO[str] | None = None,
    root: bool = False,
) -> logging.Handler:
    """Make logs one JSON object per line, with request context and secrets masked.

    Call it once in the host app (e.g. at startup); calling it again replaces the handler it
    installed before instead of adding another.

    Args:
        level: Level of the configured logger.
        stream: Where lines go (default ``sys.stderr``).
        root: ``False`` (default) configures only the ``llm_server`` logger and stops its
            records from also reaching the root logger's handlers (no duplicate, unstructured
            lines). ``True`` installs the handler on the root logger, so every library's logs
            become JSON.

    Returns:
        The installed handler (remove it with ``logger.removeHandler`` to undo).
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(LogContextFilter())
    handler.addFilter(RedactingFilter())
    setattr(handler, _HANDLER_MARK, True)

    library = logging.getLogger(LIBRARY_LOGGER)
    target = logging.getLogger() if root else library
    for logger in (library, logging.getLogger()):
        for old in list(logger.handlers):
            if getattr(old, _HANDLER_MARK, False):
                logger.removeHandler(old)
    target.addHandler(handler)
    target.setLevel(level)
    library.propagate = root
    if root:
        library.setLevel(logging.NOTSET)
    return handler
