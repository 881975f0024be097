"""A small HTTP/1.1 server on asyncio streams, just enough for LLM clients.

We own the socket instead of running uvicorn so that the test provider can do what a real
server framework hides: reset a connection (RST), hang without a timeout, or send a body that
is not JSON, and still keep per-request overhead to a few tens of microseconds. Keep-alive,
``Content-Length`` and chunked request bodies, ``Expect: 100-continue`` and chunked responses
(for Server-Sent Events) are supported; pipelining is not needed by any LLM client.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from llm_server.core.errors import InputError

__all__ = ["HttpConnection", "HttpRequest", "ProtocolViolationError"]

_MAX_HEAD_BYTES: Final = 1 << 20
_MAX_BODY_BYTES: Final = 64 << 20
_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}


class ProtocolViolationError(InputError):
    """The client sent something that is not HTTP/1.1 we can parse; the connection is closed."""


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """One parsed request.

    Attributes:
        method: Upper-case method (``POST``).
        path: The path without the query string.
        headers: Header names lower-cased; repeated headers joined with ``", "``.
        body: The raw body.
        keep_alive: Whether the client wants the connection kept open afterwards.
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    keep_alive: bool


class HttpConnection:
    """One client connection: read requests, write responses."""

    __slots__ = ("_reader", "_writer", "closed")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.closed = False

    async def read_request(self) -> HttpRequest | None:
        """The next request, or ``None`` when the client closed the connection cleanly."""
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial.strip():
                raise ProtocolViolationError("connection closed inside a request head") from exc
            return None
        except asyncio.LimitOverrunError as exc:
            raise ProtocolViolationError("request head too large") from exc
        lines = head[:-4].decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError as exc:
            raise ProtocolViolationError(f"bad request line {lines[0]!r}") from exc
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise ProtocolViolationError(f"bad header line {line!r}")
            key = name.strip().lower()
            value = value.strip()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        if headers.get("expect", "").lower() == "100-continue":
            self._writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._read_body(headers)
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        return HttpRequest(method.upper(), target.split("?", 1)[0], headers, body, keep_alive)

    async def _read_body(self, headers: Mapping[str, str]) -> bytes:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return await self._read_chunked()
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError as exc:
            raise ProtocolViolationError("bad Content-Length") from exc
        if not 0 <= length <= _MAX_BODY_BYTES:
            raise ProtocolViolationError("Content-Length out of range")
        try:
            return await self._reader.readexactly(length) if length else b""
        except asyncio.IncompleteReadError as exc:
            raise ProtocolViolationError("connection closed inside a request body") from exc

    async def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        size_total = 0
        try:
            while True:
                size_line = await self._reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    await self._reader.readuntil(b"\r\n")  # trailers are not supported
                    return b"".join(parts)
                size_total += size
                if size_total > _MAX_BODY_BYTES:
                    raise ProtocolViolationError("chunked body too large")
                parts.append(await self._reader.readexactly(size))
                await self._reader.readexactly(2)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise ProtocolViolationError("bad chunked request body") from exc

    async def respond(
        self,
        status: int,
        body: bytes,
        *,
        headers: Iterable[tuple[str, str]] = (),
        content_type: str = "application/json",
        keep_alive: bool = True,
    ) -> None:
        """Write a complete response with a ``Content-Length``."""
        head = [
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
            f"content-type: {content_type}",
            f"content-length: {len(body)}",
            f"connection: {'keep-alive' if keep_alive else 'close'}",
        ]
        head.extend(f"{name}: {value}" for name, value in headers)
        self._writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await self._writer.drain()

    async def start_stream(self, *, content_type: str = "text/event-stream") -> None:
        """Start a ``200`` chunked response; then :meth:`send_chunk`, :meth:`end_stream`."""
        self._writer.write(
            (
                "HTTP/1.1 200 OK\r\n"
                f"content-type: {content_type}\r\n"
                "cache-control: no-cache\r\n"
                "transfer-encoding: chunked\r\n"
                "connection: keep-alive\r\n\r\n"
            ).encode("latin-1")
        )
        await self._writer.drain()

    async def send_chunk(self, data: bytes) -> None:
        """Write one chunk of a chunked response."""
        if data:
            self._writer.write(b"%x\r\n%b\r\n" % (len(data), data))
            await self._writer.drain()

    async def end_stream(self) -> None:
        """Finish a chunked response."""
        self._writer.write(b"0\r\n\r\n")
        await self._writer.drain()

    async def wait_for_client_close(self) -> None:
        """Return once the client closes its side (anything it sends meanwhile is dropped)."""
        while await self._reader.read(65536):
            pass

    def reset(self) -> None:
        """Close the connection abruptly: SO_LINGER 0 makes the kernel send RST, not FIN."""
        sock = self._writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._writer.transport.abort()
        self.closed = True

    def close(self) -> None:
        """Close the connection gracefully."""
        if not self.closed:
            self.closed = True
            self._writer.close()
