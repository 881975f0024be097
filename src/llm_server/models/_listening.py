"""Run a DSPy program with its string fields streamed into a :class:`StreamSink`.

What ``dspy.streamify(program, stream_listeners=..., is_async_program=True)`` does, without
the three things it adds around each call that a sink does not need:

* a memory object stream, a task group and a second task: every chunk went from the task
  running the program, through the stream, to the task reading it. Here DSPy's LM calls
  write each chunk to a :class:`ListenerFeed` (DSPy's ``send_stream`` setting), which hands it
  to the chunk's listeners and their output to the sink at once, in the program's own task;
* a ``StatusStreamingCallback`` in DSPy's callbacks: with any callback registered, every
  ``Module``, adapter and LM call DSPy makes inspects its arguments
  (``inspect.getcallargs``) for the callback, even when no status message comes of it (a
  sink carries no status messages);
* the final prediction as one more item of the stream: here it is the program's result.

The listeners are DSPy's own :class:`~dspy.streaming.StreamListener` (built per call: a
reused one streams nothing after its first call, DSPy #8425), bound to their predictors by
DSPy's own ``find_predictor_for_stream_listeners``; DSPy's LM calls decide what to stream
from the same two settings ``streamify`` sets (``send_stream``, ``stream_listeners``).

This module imports DSPy; the backend imports it lazily.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dspy
from dspy.streaming import StreamListener
from dspy.streaming.streaming_listener import find_predictor_for_stream_listeners

from llm_server.core.streaming import StreamSink

__all__ = ["ListenerFeed", "run_listened"]


class ListenerFeed:
    """The ``send_stream`` of a listened call: each chunk through its predictor's listeners.

    DSPy's LM calls ``await send_stream.send(chunk)`` for each chunk of a listened predictor
    (a chunk carries the predictor's id, ``predict_id``). Anything else DSPy may send (a
    status message from a callback the host registered) is not a piece of a field: dropped.
    """

    __slots__ = ("_listeners", "_on_piece", "_sink")

    def __init__(
        self,
        listeners: Mapping[int, Sequence[StreamListener]],
        sink: StreamSink,
        on_piece: Callable[[], None] | None = None,
    ) -> None:
        self._listeners = listeners
        self._sink = sink
        self._on_piece = on_piece

    async def send(self, value: Any) -> None:
        """Take one item from DSPy (never waits: the sink does not block)."""
        listeners = self._listeners.get(getattr(value, "predict_id", None))  # type: ignore[arg-type]
        if not listeners:
            return
        first = not self._sink.started
        for listener in listeners:
            self._put(listener.receive(value))
        if first and self._sink.started:
            # Let the reader send the first piece now: the chunks after it may already be
            # here (a provider sending a burst), and reading them does not suspend, so the
            # first piece would otherwise wait for the whole burst to be parsed.
            await asyncio.sleep(0)

    def flush(self, listeners: Sequence[StreamListener]) -> None:
        """Put what ``listeners`` still hold back (after the program returned)."""
        for listener in listeners:
            self._put(listener.finalize())

    def _put(self, response: Any) -> None:
        if response is None or not response.chunk:  # a listener's last output may be empty
            return
        if self._on_piece is not None and not self._sink.started:
            self._on_piece()
        self._sink.put(response.signature_field_name, response.chunk)


async def run_listened(
    program: Any,
    input: Mapping[str, Any],
    fields: Sequence[str],
    sink: StreamSink,
    on_first_piece: Callable[[], None] | None = None,
) -> Any:
    """Await ``program.acall(**input)`` with the pieces of ``fields`` going into ``sink``.

    Args:
        program: The DSPy program.
        input: Its input fields by name.
        fields: The string output fields to stream (each produced by one predictor).
        sink: Where the pieces go, as they arrive.
        on_first_piece: Called once, just before the first piece is put.

    Returns:
        The program's prediction. On a cache hit DSPy streams nothing: the caller sends the
        fields whole.
    """
    listeners = [StreamListener(signature_field_name=name) for name in fields]
    by_predictor = find_predictor_for_stream_listeners(program, listeners)
    feed = ListenerFeed(by_predictor, sink, on_first_piece)
    # track_usage: DSPy's LiteLLM stream asks the provider for its usage chunk only with it on
    # (without it LiteLLM counts the streamed content itself: a refusal's tokens as 0). The
    # request scope's tracker is set, so DSPy's modules start no tracker of their own.
    with dspy.context(send_stream=feed, stream_listeners=listeners, track_usage=True):
        prediction = await program.acall(**input)
    feed.flush(listeners)
    return prediction
