"""Streamed program calls: DSPy's listeners fed in the program's own task (no streamify)."""

from __future__ import annotations

from typing import Any

import dspy
import pytest
from _model_helpers import ENGINE_PROTOCOLS, MakeManager, model
from dspy.streaming import StreamListener
from dspy.streaming.messages import StatusMessage
from dspy.utils.callback import BaseCallback

from llm_server.core.streaming import Finished, StreamSink, TextDelta, stream_events
from llm_server.models._listening import ListenerFeed
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio

LONG = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_the_first_piece_reaches_the_reader_before_the_rest_of_a_burst(
    make_manager: MakeManager,
    provider: LocalProvider,
    monkeypatch: pytest.MonkeyPatch,
    engine: str,
    protocol: str,
) -> None:
    provider.script(reply=LONG)  # rendered in the adapter's format
    manager = make_manager({"m": model(protocol, engine)})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "m")
    put: list[str] = []
    original = StreamSink.put

    def counting(self: StreamSink, field: str, text: str) -> None:
        put.append(text)
        original(self, field, text)

    monkeypatch.setattr(StreamSink, "put", counting)
    put_when_read: list[int] = []
    texts: list[str] = []

    async for event in stream_events(lambda: backend.predict({"question": "q"})):
        if isinstance(event, TextDelta):
            put_when_read.append(len(put))
            texts.append(event.text)

    # the provider sent the whole answer at once (no pacing): the first piece was read
    # before the listener parsed the chunks after it, the later ones as they came
    assert put_when_read[0] == 1
    assert len(texts) > 2
    assert "".join(texts) == LONG


class Recorder(BaseCallback):  # type: ignore[misc]  # dspy is untyped
    def __init__(self) -> None:
        self.events: list[str] = []
        self.callbacks_seen: list[list[Any]] = []

    def on_module_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.callbacks_seen.append(list(dspy.settings.callbacks))

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("lm start")

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        self.events.append("lm end" if exception is None else "lm error")


async def test_a_streamed_call_keeps_the_hosts_callbacks_and_adds_none(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    backend = manager.single_attempt_backend(dspy.ChainOfThought("question -> answer"), "m")
    recorder = Recorder()

    with dspy.context(callbacks=[recorder]):
        events = [e async for e in stream_events(lambda: backend.predict({"question": "q"}))]

    fields = {e.field for e in events if isinstance(e, TextDelta)}
    assert fields == {"reasoning", "answer"}  # both string fields of the one predictor
    assert isinstance(events[-1], Finished)
    assert recorder.events == ["lm start", "lm end"]
    # no StatusStreamingCallback (dspy.streamify's) beside the host's own
    assert recorder.callbacks_seen
    assert all(seen == [recorder] for seen in recorder.callbacks_seen)


async def test_the_feed_drops_what_is_not_a_listened_predictors_chunk() -> None:
    sink = StreamSink()
    listener = StreamListener(signature_field_name="answer")
    feed = ListenerFeed({1: [listener]}, sink)

    await feed.send(StatusMessage("Calling tool search..."))  # a host's status callback
    await feed.send(type("Chunk", (), {"predict_id": 2})())  # a predictor nobody listens to

    assert sink.pieces == 0
    assert not sink.started
