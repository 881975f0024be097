"""Streaming a model call's output fields as they arrive, with the model-call stack unchanged.

::

    async for event in stream_events(lambda: backend.predict(inputs)):
        if isinstance(event, TextDelta):
            print(event.field, event.text)      # a piece of a string output field
        else:
            output = event.result               # Finished: what the call returned

:func:`stream_events` runs the call in a task with a :class:`StreamSink` in its context. The
DSPy backend at the bottom of the stack sees the sink and runs its program with DSPy's stream
listeners built for this call (a reused listener streams nothing after its first call: DSPy
#8425), on the event loop, feeding their pieces to the sink as the chunks arrive
(:mod:`llm_server.models._listening`: what ``dspy.streamify`` does, without its extra task,
memory stream and status callback). Everything above it works as for
a plain call: the deadline bounds the whole stream; retries, fallbacks and the circuit breaker
apply until the first piece, and after it a failure is a
:class:`~llm_server.core.errors.StreamInterruptedError`, which is never retried (the client has
part of an answer). Breaking out of the loop (a client gone) cancels the call; its usage
stays on the books (see :mod:`llm_server.core.metrics_wrappers`).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, TypeVar

import anyio

__all__ = ["Finished", "StreamSink", "TextDelta", "current_sink", "stream_events", "streaming_to"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of a string output field, in the order the model produced it.

    Attributes:
        field: The output field's name (``reasoning`` for ``ChainOfThought``'s reasoning).
        text: The piece.
    """

    field: str
    text: str


@dataclass(frozen=True, slots=True)
class Finished(Generic[T]):
    """The last event of a stream: what the call returned.

    Attributes:
        result: The call's return value (a ``ModelOutput``, a ``PipelineData``, ...).
    """

    result: T


class StreamSink:
    """Where a streamed call puts its pieces; read by :func:`stream_events`.

    Attributes:
        first_piece_at: ``time.perf_counter()`` of the first piece, ``None`` before it.
        pieces: How many pieces were put.
    """

    def __init__(self) -> None:
        # a deque and one waiter: cheaper than an asyncio.Queue, and enough for one reader
        self._pieces: collections.deque[TextDelta | None] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self.first_piece_at: float | None = None
        self.pieces = 0

    @property
    def started(self) -> bool:
        """Whether a piece was put: from then on, a failure is not retried."""
        return self.first_piece_at is not None

    def put(self, field: str, text: str) -> None:
        """Hand one piece to the reader (never blocks)."""
        if self.first_piece_at is None:
            self.first_piece_at = time.perf_counter()
        self.pieces += 1
        self._push(TextDelta(field, text))

    def close(self) -> None:
        """No more pieces: the reader gets ``None`` once it read the ones before."""
        self._push(None)

    def _push(self, item: TextDelta | None) -> None:
        self._pieces.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> TextDelta | None:
        """The next piece (waits for it), or ``None`` after :meth:`close`."""
        while not self._pieces:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pieces.popleft()


_sink: ContextVar[StreamSink | None] = ContextVar("llm_server_stream_sink", default=None)


def current_sink() -> StreamSink | None:
    """The sink of the streamed call running in this context, if any."""
    return _sink.get()


@contextmanager
def streaming_to(sink: StreamSink) -> Iterator[StreamSink]:
    """Model calls made inside the block stream their pieces into ``sink``."""
    token = _sink.set(sink)
    try:
        yield sink
    finally:
        _sink.reset(token)


async def stream_events(
    call: Callable[[], Awaitable[T]],
) -> AsyncGenerator[TextDelta | Finished[T], None]:
    """Run ``call()`` streaming: yield its pieces as they arrive, then :class:`Finished`.

    Args:
        call: Makes the call (e.g. ``lambda: backend.predict(inputs)`` or
            ``lambda: pipeline.execute(data)``); it runs in a task of its own, in a copy of
            this context (the request's metrics and log context go with it).

    Raises:
        Exception: Whatever the call raised, after the pieces put before it.
    """
    sink = StreamSink()

    async def run() -> T:
        with streaming_to(sink):
            return await call()

    task = asyncio.ensure_future(run())
    task.add_done_callback(lambda _: sink.close())  # wakes the reader: no task per piece
    try:
        while True:
            piece = await sink.get()
            if piece is None:
                break
            yield piece
        yield Finished(task.result())  # raises the call's error, if it failed
    finally:
        if not task.done():  # the reader left (a client gone): the call is cancelled
            task.cancel()
            # shielded: the reader may be cancelled itself, and the call's end (its usage
            # recorded, its error retrieved) must still be awaited
            with anyio.CancelScope(shield=True):
                await asyncio.gather(task, return_exceptions=True)
