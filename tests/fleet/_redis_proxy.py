"""A TCP proxy of the tests' own, in front of a private redis-server: latency, silence, resets.

It runs its own event loop in a thread, so the loop a test measures carries none of its work.
Every byte a client sends is delivered ``latency_s`` later (in order), every byte Redis answers
``reply_latency_s`` later (a reply that comes late, after Redis acted); while ``silent`` the
proxy forwards nothing (a Redis that stopped answering, sockets still open); ``reset()``
aborts every connection (RST); ``target`` can be switched (a promoted replica).
"""

from __future__ import annotations

import asyncio
import threading
import time
from contextlib import suppress


class RedisProxy:
    """``proxy = RedisProxy(host, port); proxy.start(); ... proxy.close()``; ``proxy.url``."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.latency_s = 0.0
        self.reply_latency_s = 0.0
        self._silent = False
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._speak: asyncio.Event | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProxy:
        """Listen on a free loopback port."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(5)
        return self

    async def _listen(self) -> None:
        self._speak = asyncio.Event()
        self._speak.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def silence(self) -> None:
        """Forward nothing until :meth:`speak` (connections stay open)."""
        self._loop.call_soon_threadsafe(self._set_silent, True)

    def speak(self) -> None:
        """Forward again what waited, and what comes."""
        self._loop.call_soon_threadsafe(self._set_silent, False)

    def _set_silent(self, silent: bool) -> None:
        assert self._speak is not None
        self._silent = silent
        if silent:
            self._speak.clear()
        else:
            self._speak.set()

    def reset(self) -> None:
        """Abort every open connection (the clients see a reset)."""

        async def abort() -> None:
            for writer in list(self._writers):
                writer.transport.abort()
            self._writers.clear()

        asyncio.run_coroutine_threadsafe(abort(), self._loop).result(5)

    def close(self) -> None:
        """Stop listening, abort every connection and stop the thread."""

        async def stop() -> None:
            if self._server is not None:
                self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))
        tasks = [
            asyncio.ensure_future(self._pump(reader, up_writer, replies=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, replies=True)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for side in (writer, up_writer):
            side.close()  # what was written is still sent (reset() aborts instead)
            self._writers.discard(side)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, replies: bool
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            assert self._speak is not None
            while True:
                due, data = await queue.get()
                if not data:
                    return  # the sender closed: what it sent before was delivered (as TCP)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await self._speak.wait()
                writer.write(data)
                await writer.drain()

        sender = asyncio.ensure_future(deliver())
        try:
            with suppress(OSError):  # a reset too: what was read was sent, it is delivered
                while data := await reader.read(65536):
                    late = self.reply_latency_s if replies else self.latency_s
                    queue.put_nowait((time.monotonic() + late, data))
            queue.put_nowait((0.0, b""))
            with suppress(OSError):
                await sender
        finally:
            sender.cancel()
            with suppress(asyncio.CancelledError, OSError):
                await sender
