"""Server-Sent Events for streamed calls: ``delta`` events, then ``done`` or ``error`` (private)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import anyio
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse
from starlette.types import Send

from llm_server.core.errors import LLMServerError
from llm_server.core.streaming import Finished, TextDelta
from llm_server.fastapi._errors import error_envelope, log_unexpected

__all__ = ["sse_response"]

FIRST_EVENT_WAIT_S = 2.0
"""How long the response waits for the first event before it starts the stream anyway."""
PING_S = 10.0
"""Seconds of silence after which a keep-alive comment is sent."""


def _event(name: str, data: Mapping[str, Any]) -> bytes:
    # JSON escapes line breaks, so the data is one line: the SSE framing is written directly
    # (what fastapi.sse.format_sse_event writes for one event name and one data line)
    return b"event: %s\ndata: %s\n\n" % (
        name.encode(),
        json.dumps(data, separators=(",", ":")).encode(),
    )


def _error_data(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, LLMServerError):
        return error_envelope(exc.error_type, exc.message, usage=exc.request_usage)
    log_unexpected(exc)
    return error_envelope("internal_error", "internal server error")


class _EventStream(EventSourceResponse):
    """The SSE response: its status line waits for the first event, then events stream.

    The response's task reads the events itself, so a piece put by the call reaches the
    client after one turn of the event loop (no task, timer or wait per event). One helper
    task per stream does the waiting: after ``first_event_wait_s`` without an event it sends
    the status line (200) so the client sees the stream start, and after ``ping_s`` of
    silence a keep-alive comment. A failure before the first event is raised from here,
    before anything was sent, where the app's exception handlers answer it (FastAPI sends a
    response inside its exception handling).
    """

    def __init__(
        self,
        events: AsyncGenerator[TextDelta | Finished[Any], None],
        *,
        encode: Callable[[TextDelta | Finished[Any], set[str]], list[bytes]],
        first_event_wait_s: float,
        ping_s: float,
        on_error: Callable[[Exception], object] | None = None,
    ) -> None:
        super().__init__(_never(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events
        self._encode = encode
        self._on_error = on_error
        self.first_event_wait_s = first_event_wait_s
        self.ping_s = ping_s

    async def stream_response(self, send: Send) -> None:
        writer = _Writer(send, self.status_code, self.raw_headers)
        events = self._events
        streamed: set[str] = set()
        waiting = asyncio.ensure_future(writer.wait(self.first_event_wait_s, self.ping_s))
        try:
            while True:
                try:
                    event = await anext(events)
                except StopAsyncIteration:
                    break
                except Exception as exc:
                    if self._on_error is not None:
                        self._on_error(exc)  # before and after the stream started alike
                    if not writer.started:
                        raise  # answered by the error handlers, with its status
                    await writer.put(_event("error", _error_data(exc)))  # after it started
                    break
                await writer.start()
                for chunk in self._encode(event, streamed):
                    await writer.put(chunk)
                if isinstance(event, Finished):
                    break
        finally:
            waiting.cancel()
            # Shielded: a client gone cancels this task, and the call must still be
            # cancelled and its usage kept before the generator is closed.
            with anyio.CancelScope(shield=True):
                await events.aclose()
        await writer.start()  # a stream that ended without an event
        await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Writer:
    """Sends one stream's status line and chunks; also waits to start it, and pings."""

    def __init__(self, send: Send, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self._send = send
        self._status = status
        self._headers = headers
        self.started = False
        # the reader and the waiter both send: one message at a time, the status line first
        # (uncontended, taking the lock does not suspend)
        self._lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._last_sent = self._loop.time()

    async def start(self) -> None:
        """Send the status line, once."""
        if self.started:
            return
        async with self._lock:
            if not self.started:
                self.started = True
                await self._send(
                    {
                        "type": "http.response.start",
                        "status": self._status,
                        "headers": self._headers,
                    }
                )

    async def put(self, chunk: bytes) -> None:
        """Send one chunk of the body."""
        async with self._lock:
            try:
                await self._send({"type": "http.response.body", "body": chunk, "more_body": True})
            finally:
                self._last_sent = self._loop.time()

    async def wait(self, first_event_wait_s: float, ping_s: float) -> None:
        """Start the stream after ``first_event_wait_s`` without an event; keep it alive with a
        comment after each ``ping_s`` of silence once started (runs until cancelled)."""
        loop = self._loop
        start_at = loop.time() + first_event_wait_s
        while True:
            now = loop.time()
            if not self.started:
                if now >= start_at:
                    await self.start()  # a slow first event: the client sees the stream start
                    continue
                # the reader may start it meanwhile: look again within ping_s
                await asyncio.sleep(min(start_at - now, ping_s))
            elif now - self._last_sent >= ping_s and not self._lock.locked():
                await self.put(KEEPALIVE_COMMENT)
            else:
                await asyncio.sleep(max(0.0, self._last_sent + ping_s - now) or ping_s)


async def _never() -> AsyncIterator[bytes]:
    # the body starlette's StreamingResponse asks for; _EventStream writes its own
    return
    yield b""  # pragma: no cover -- makes this an async generator


async def sse_response(
    events: AsyncGenerator[TextDelta | Finished[Any], None],
    *,
    done: Callable[[Any], Mapping[str, Any]],
    on_error: Callable[[Exception], object] | None = None,
    on_first_delta: Callable[[], object] | None = None,
    first_event_wait_s: float = FIRST_EVENT_WAIT_S,
    ping_s: float = PING_S,
) -> EventSourceResponse:
    """Turn a stream of events into a ``text/event-stream`` response.

    Return the response from the endpoint. It reads ``events`` when it is sent and waits for
    the first event before its status line: a call that fails before it (an open breaker,
    an unknown model, a provider error after the retries) raises then, so the app's error
    handlers answer with the error envelope and its HTTP status, not with a 200 stream. When
    nothing came within ``first_event_wait_s``, the stream starts anyway with keep-alive
    comments, and a later failure ends it with an ``error`` event.

    Events: ``delta`` (``{"field", "text"}``) per piece; then one ``done`` whose data is
    ``done(result)``, the full envelope (a string field of its ``data`` that streamed nothing,
    as on a cache hit, is first sent whole as one ``delta``); or one ``error`` with the error
    envelope. A keep-alive comment goes out after ``ping_s`` of silence. A client that leaves
    ends the stream: ``events`` is closed (for :func:`~llm_server.core.streaming.stream_events`
    that cancels the call, whose usage stays on the books).

    Args:
        events: From :func:`llm_server.core.streaming.stream_events`.
        done: Builds the ``done`` event's data from the call's result.
        on_error: Called with the call's error when it fails, before the first event or
            after (not when the client leaves); it must not raise.
        on_first_delta: Called when the first piece arrives (e.g. to time the first token).
        first_event_wait_s: How long to wait for the first event before streaming.
        ping_s: Silence before a keep-alive comment.
    """

    def encode(event: TextDelta | Finished[Any], streamed: set[str]) -> list[bytes]:
        if isinstance(event, TextDelta):
            if not streamed and on_first_delta is not None:
                on_first_delta()
            streamed.add(event.field)
            return [_event("delta", {"field": event.field, "text": event.text})]
        envelope = done(event.result)
        data = envelope.get("data")
        whole = [
            _event("delta", {"field": name, "text": value})
            for name, value in (data.items() if isinstance(data, Mapping) else ())
            if isinstance(value, str) and name not in streamed
        ]
        return [*whole, _event("done", envelope)]

    return _EventStream(
        events,
        encode=encode,
        first_event_wait_s=first_event_wait_s,
        ping_s=ping_s,
        on_error=on_error,
    )
