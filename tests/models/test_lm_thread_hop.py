"""ManagedLM's thread hops: text-only calls are prepared on the loop (media keep DSPy's worker
thread); capability planning and the native engine's routing leave the thread after an LM's
first call; other LMs keep DSPy's behaviour."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Callable
from typing import Any

import dspy
import pytest
from _model_helpers import ENGINE_PROTOCOLS, MakeManager, model
from dspy.utils.callback import BaseCallback
from PIL import Image

from llm_server.core.streaming import Finished, TextDelta, stream_events
from llm_server.models._managed_lm import ManagedLM, _text_only
from llm_server.testing import LocalProvider

pytestmark = pytest.mark.anyio


@pytest.fixture
def thread_jobs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of the functions sent to ``asyncio.to_thread`` during the test."""
    jobs: list[str] = []
    original = asyncio.to_thread

    async def spy(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        jobs.append(getattr(func, "__name__", repr(func)))
        return await original(func, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    return jobs


class Described(dspy.Signature):
    """Describe the picture."""

    image: dspy.Image = dspy.InputField()
    description: str = dspy.OutputField()


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_a_text_call_is_prepared_without_a_thread_hop(
    make_manager: MakeManager, thread_jobs: list[str], engine: str, protocol: str
) -> None:
    manager = make_manager({"m": model(protocol, engine)})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "m")

    output = await backend.predict({"question": "What is DSPy?"})

    assert output.content.answer == "echo: What is DSPy?"
    assert output.usage is not None
    assert output.usage.input_tokens > 0
    assert "prepare" not in thread_jobs


async def test_a_call_with_an_image_keeps_dspys_worker_thread(
    make_manager: MakeManager, provider: LocalProvider, thread_jobs: list[str]
) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    backend = manager.single_attempt_backend(dspy.Predict(Described), "m")

    await backend.predict({"image": dspy.Image(_png())})

    assert "prepare" in thread_jobs
    (request,) = provider.requests
    assert request.images  # the image still reached the provider


class Recorder(BaseCallback):  # type: ignore[misc]  # dspy is untyped
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_lm_start(self, call_id: str, instance: Any, inputs: dict[str, Any]) -> None:
        self.events.append("start")

    def on_lm_end(self, call_id: str, outputs: Any, exception: Exception | None = None) -> None:
        self.events.append("end" if exception is None else "error")


async def test_dspy_lm_callbacks_fire_once_per_call_on_the_inline_path(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "m")
    recorder = Recorder()

    with dspy.context(callbacks=[recorder]):
        await backend.predict({"question": "hi"})

    assert recorder.events == ["start", "end"]


@pytest.mark.parametrize(
    ("prompt", "messages", "kwargs", "expected"),
    [
        (None, [{"role": "user", "content": "hi"}], {}, True),
        ("hi", None, {}, True),
        (None, None, {}, True),
        (None, [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], {}, False),
        (None, [{"role": "user", "content": "hi"}], {"request": object()}, False),
        (object(), None, {}, False),
        (None, ("not", "a", "list"), {}, False),
    ],
)
def test_text_only_is_strict(prompt: Any, messages: Any, kwargs: Any, expected: bool) -> None:
    assert _text_only(prompt, messages, kwargs) is expected


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
@pytest.mark.parametrize("streamed", [False, True], ids=["plain", "streamed"])
async def test_only_the_first_call_plans_and_routes_in_a_thread(
    make_manager: MakeManager, thread_jobs: list[str], engine: str, protocol: str, streamed: bool
) -> None:
    manager = make_manager({"m": model(protocol, engine)})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "m")
    native = manager.model_info["m"].engine == "lm15"

    async def call(question: str) -> str:
        if not streamed:
            return str((await backend.predict({"question": question})).content.answer)
        events = [e async for e in stream_events(lambda: backend.predict({"question": question}))]
        assert isinstance(events[0], TextDelta)  # it did stream
        assert isinstance(events[-1], Finished)
        return str(events[-1].result.content.answer)

    assert await call("first") == "echo: first"
    assert "capabilities" in thread_jobs  # DSPy's planning: may load the model catalog
    assert ("_target" in thread_jobs) is native  # the native engine builds its provider
    thread_jobs.clear()

    assert await call("second") == "echo: second"
    assert await call("third") == "echo: third"
    assert "capabilities" not in thread_jobs
    assert "_target" not in thread_jobs
    # DSPy's price estimate, which the manager skips for its LMs: no empty job in a thread
    assert "_price_result" not in thread_jobs
    assert "_price_legacy" not in thread_jobs  # LiteLLM's engine: the same estimate
    assert thread_jobs == []


async def test_an_adapter_reading_capabilities_still_gets_them(make_manager: MakeManager) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    backend = manager.single_attempt_backend(dspy.Predict("question -> answer"), "m")
    await backend.predict({"question": "warm"})  # planned once, in the thread
    lm = backend.lm
    assert isinstance(lm, ManagedLM)
    assert lm._planned

    # what JSONAdapter reads, computed on the loop now
    with dspy.context(adapter=dspy.JSONAdapter()):
        output = await backend.predict({"question": "json"})

    assert "response_format" in lm.supported_params
    assert output.content.answer


async def test_a_plain_dspy_lm_keeps_dspys_planning_thread(
    provider: LocalProvider, thread_jobs: list[str]
) -> None:
    lm = dspy.LM("openai/gpt-4o-mini", api_base=provider.openai_api_base, api_key="k", cache=False)
    program = dspy.Predict("question -> answer")

    try:
        with dspy.context(lm=lm):
            for question in ("one", "two"):
                await program.acall(question=question)
    finally:
        await lm.aclose()  # its pool, on this test's loop

    assert thread_jobs.count("capabilities") == 2
    assert thread_jobs.count("_target") == 2
    assert thread_jobs.count("_price_result") == 2  # DSPy's own estimate, in its thread
