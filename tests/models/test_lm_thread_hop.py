"""ManagedLM prepares text-only calls on the loop; calls with media keep DSPy's worker thread."""

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

from llm_server.models._managed_lm import _text_only
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
