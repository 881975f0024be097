"""Server-Sent Events for streamed calls: ``delta`` events, then ``done`` or ``error`` (private)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event

from llm_server.core.errors import LLMServerError
from llm_server.core.streaming import Finished, TextDelta
from llm_server.fastapi._errors import error_envelope, log_unexpected

__all__ = ["sse_response"]

FIRST_EVENT_WAIT_S = 2.0
"""How long the response waits for the first event before it starts the stream anyway."""
PING_S = 10.0
"""Seconds of silence after which a keep-alive comment is sent."""


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    return format_sse_event(event=name, data_str=json.dumps(data, separators=(",", ":")))


def _error_data(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LLMServerError):
        return error_envelope(exc.error_type, exc.message)
    log_unexpected(exc)
    return error_envelope("internal_error", "internal server error")


async def sse_response(
    events: AsyncGenerator[TextDelta | Finished[Any], None],
    *,
    done: Callable[[Any], Mapping[str, Any]],
    on_first_delta: Callable[[], object] | None = None,
    first_event_wait_s: float = FIRST_EVENT_WAIT_S,
    ping_s: float = PING_S,
) -> EventSourceResponse:
    """Turn a stream of events into a ``text/event-stream`` response.

    Waits for the first event first: a call that fails before it (an open breaker, an unknown
    model, a provider error after the retries) raises here, so the host's error handlers
    answer with the error envelope and its HTTP status, not with a 200 stream. When nothing
    came within ``first_event_wait_s``, the stream starts anyway with keep-alive comments, and
    a later failure ends it with an ``error`` event.

    Events: ``delta`` (``{"field", "text"}``) per piece; then one ``done`` whose data is
    ``done(result)``, the full envelope (a string field of its ``data`` that streamed nothing,
    as on a cache hit, is first sent whole as one ``delta``); or one ``error`` with the error
    envelope. A keep-alive comment goes out after ``ping_s`` of silence.

    Args:
        events: From :func:`llm_server.core.streaming.stream_events`.
        done: Builds the ``done`` event's data from the call's result.
        on_first_delta: Called when the first piece arrives (e.g. to time the first token).
        first_event_wait_s: How long to wait for the first event before streaming.
        ping_s: Silence before a keep-alive comment.
    """
    iterator = events
    upcoming: asyncio.Future[TextDelta | Finished[Any]] = asyncio.ensure_future(anext(iterator))
    await asyncio.wait({upcoming}, timeout=first_event_wait_s)
    if upcoming.done() and upcoming.exception() is not None:
        await iterator.aclose()
        upcoming.result()  # raises: answered by the error handlers, with its status

    async def body() -> AsyncIterator[bytes]:
        nonlocal upcoming
        streamed: set[str] = set()
        try:
            while True:
                if not upcoming.done():
                    await asyncio.wait({upcoming}, timeout=ping_s)
                    if not upcoming.done():
                        yield KEEPALIVE_COMMENT
                        continue
                try:
                    event = upcoming.result()
                except StopAsyncIteration:
                    return
                except Exception as exc:  # after the stream started: an error event
                    yield _event("error", _error_data(exc))
                    return
                if isinstance(event, TextDelta):
                    if not streamed and on_first_delta is not None:
                        on_first_delta()
                    streamed.add(event.field)
                    yield _event("delta", {"field": event.field, "text": event.text})
                else:
                    envelope = done(event.result)
                    data = envelope.get("data")
                    for name, value in data.items() if isinstance(data, Mapping) else ():
                        if isinstance(value, str) and name not in streamed:
                            yield _event("delta", {"field": name, "text": value})
                    yield _event("done", envelope)
                    return
                upcoming = asyncio.ensure_future(anext(iterator))
        finally:
            # Shielded: a client gone cancels this task, and the call must still be cancelled
            # and its usage kept before the generator is closed.
            with anyio.CancelScope(shield=True):
                if not upcoming.done():
                    upcoming.cancel()
                    await asyncio.wait({upcoming})
                await iterator.aclose()

    return EventSourceResponse(
        body(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
