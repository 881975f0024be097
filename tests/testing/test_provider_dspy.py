"""LocalProvider driven by DSPy's two engines (lm15 via engine="auto", and LiteLLM)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import dspy
import pytest
from dspy.utils import exceptions

from llm_server.core.tokens import count_message_tokens, count_text_tokens
from llm_server.testing import LocalProvider

ENGINES = ["auto", "litellm"]
MODELS = ["openai/gpt-4o-mini", "anthropic/claude-3-5-haiku-20241022"]

Closer = Callable[[Any], Any]
"""The ``closing_lms`` fixture (tests/conftest.py): closes an LM's pools when the test ends."""


@pytest.fixture(scope="module", autouse=True)
def _no_dspy_cache() -> None:
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)


@pytest.fixture(scope="module")
def shared() -> Iterator[LocalProvider]:
    with LocalProvider() as running:
        yield running


@pytest.fixture
def provider(shared: LocalProvider) -> Iterator[LocalProvider]:
    yield shared
    shared.clear_faults()
    shared.script(reply=None)
    shared.usage = True
    shared.clear()


def make_lm(provider: LocalProvider, model: str, engine: str, **kw: Any) -> Any:
    api_base = (
        provider.openai_api_base if model.startswith("openai/") else provider.anthropic_api_base
    )
    return dspy.LM(
        model,
        engine=engine,
        api_base=api_base,
        api_key="test-key",
        cache=False,
        num_retries=0,
        **kw,
    )


def prompt_tokens(body: dict[str, Any], model: str) -> int:
    system = [{"role": "system", "content": body["system"]}] if "system" in body else []
    return count_message_tokens([*system, *body["messages"]], model)


@pytest.mark.anyio
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_predict_gets_its_echo_and_exact_usage(
    provider: LocalProvider, closing_lms: Closer, engine: str, model: str
) -> None:
    lm = closing_lms(make_lm(provider, model, engine))
    with dspy.track_usage() as tracker:
        result = await dspy.Predict("question -> answer").acall(question="What is 2+2?", lm=lm)
    assert result.answer == "echo: What is 2+2?"
    [record] = provider.requests
    usage = tracker.get_total_tokens()[model]
    wire_model = model.split("/", 1)[1]
    assert usage["prompt_tokens"] == prompt_tokens(record.body, wire_model)
    assert usage["completion_tokens"] == count_text_tokens(
        "[[ ## answer ## ]]\necho: What is 2+2?\n\n[[ ## completed ## ]]", wire_model
    )


@pytest.mark.parametrize(
    ("engine", "model", "api_base", "path"),
    [
        ("auto", "openai/m", "/v1", "/v1/chat/completions"),
        ("litellm", "openai/m", "/v1", "/v1/chat/completions"),
        ("auto", "anthropic/c", "/v1", "/v1/messages"),
        ("litellm", "anthropic/c", "/v1", "/v1/v1/messages"),
        ("litellm", "anthropic/c", "", "/v1/messages"),
        ("auto", "anthropic/c", "", "/messages"),
    ],
)
def test_api_base_conventions_of_each_engine(
    provider: LocalProvider, engine: str, model: str, api_base: str, path: str
) -> None:
    lm = dspy.LM(
        model,
        engine=engine,
        api_base=provider.base_url + api_base,
        api_key="k",
        cache=False,
        num_retries=0,
    )
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question="q").answer == "echo: q"
    assert [r.path for r in provider.requests] == [path]


@pytest.mark.anyio
@pytest.mark.parametrize("engine", ENGINES)
async def test_scripted_typed_fields_and_json_adapter(
    provider: LocalProvider, closing_lms: Closer, engine: str
) -> None:
    provider.script(model="gpt-x", reply={"n": 7})
    lm = closing_lms(make_lm(provider, "openai/gpt-x", engine))
    signature = "question -> answer: str, n: int, ok: bool, tags: list[str]"
    for adapter in (dspy.ChatAdapter(), dspy.JSONAdapter()):
        with dspy.context(lm=lm, adapter=adapter):
            result = await dspy.Predict(signature).acall(question="typed?")
        assert (result.answer, result.n, result.ok, result.tags) == ("echo: typed?", 7, True, [])


@pytest.mark.anyio
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_concurrent_predicts_get_their_own_answers(
    provider: LocalProvider, closing_lms: Closer, engine: str, model: str
) -> None:
    lm = closing_lms(make_lm(provider, model, engine))
    answers: dict[int, str] = {}

    async def ask(n: int) -> None:
        answers[n] = (
            await dspy.Predict("question -> answer").acall(question=f"q{n}", lm=lm)
        ).answer

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(ask, n)
    assert answers == {n: f"echo: q{n}" for n in range(20)}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("engine", ENGINES)
def test_images_arrive_in_the_record(provider: LocalProvider, engine: str, model: str) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (2, 2), "red").save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    predict = dspy.Predict("image: dspy.Image -> answer")
    predict(image=dspy.Image(data_url), lm=make_lm(provider, model, engine))
    [image] = provider.requests[0].images
    if model.startswith("openai/"):
        assert image["image_url"]["url"] == data_url
    else:
        assert image["source"]["data"] == data_url.split(",", 1)[1]


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("rate_limit", "LMRateLimitError"),
        ("server_error", "LMServerError"),
        ("unavailable", "LMServerError"),
        ("auth", "LMAuthError"),
        ("bad_request", "LMInvalidRequestError"),
        ("context_window", "ContextWindowExceededError"),
    ],
)
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("engine", ENGINES)
def test_status_faults_reach_dspy_as_its_lm_errors(
    provider: LocalProvider, engine: str, model: str, fault: str, error: str
) -> None:
    provider.add_fault(fault, retry_after_s=3)
    with pytest.raises(getattr(exceptions, error)) as caught:
        dspy.Predict("question -> answer")(question="q", lm=make_lm(provider, model, engine))
    if fault == "rate_limit" and not (engine == "litellm" and model.startswith("anthropic/")):
        assert caught.value.retry_after == 3.0  # LiteLLM drops Retry-After on its Anthropic path


@pytest.mark.parametrize("fault", ["malformed_json", "connection_reset", "hang"])
@pytest.mark.parametrize("engine", ENGINES)
def test_transport_faults_reach_dspy_as_lm_errors(
    provider: LocalProvider, engine: str, fault: str
) -> None:
    provider.add_fault(fault)
    lm = make_lm(provider, "openai/gpt-4o-mini", engine, timeout=0.2)
    with pytest.raises(exceptions.LMError):
        dspy.Predict("question -> answer")(question="q", lm=lm)


@pytest.mark.parametrize("engine", ENGINES)
def test_missing_usage_is_not_reported_as_counted_tokens(
    provider: LocalProvider, engine: str
) -> None:
    provider.usage = False
    with dspy.track_usage() as tracker:
        dspy.Predict("question -> answer")(
            question="q", lm=make_lm(provider, "openai/gpt-4o-mini", engine)
        )
    usage = tracker.get_total_tokens().get("openai/gpt-4o-mini", {})
    assert not usage.get("prompt_tokens")  # lm15 reports {}, LiteLLM zeros (FACTS.md)


# LiteLLM's stream assembly builds a pydantic model that warns about a TypedDict it ships.
@pytest.mark.filterwarnings("ignore:.*is using the `ReadOnly` qualifier")
@pytest.mark.anyio
@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_dspy_streaming_gets_chunks_answer_and_usage(
    provider: LocalProvider, closing_lms: Closer, engine: str, model: str
) -> None:
    provider.script(reply="one two three four five six seven eight nine ten")
    program = dspy.streamify(
        dspy.Predict("question -> answer"),
        stream_listeners=[dspy.streaming.StreamListener("answer")],
        is_async_program=True,
    )
    chunks: list[str] = []
    final = None
    lm = closing_lms(make_lm(provider, model, engine))
    with dspy.context(lm=lm), dspy.track_usage() as tracker:
        async for item in program(question="stream"):
            if isinstance(item, dspy.streaming.StreamResponse):
                chunks.append(item.chunk)
            elif isinstance(item, dspy.Prediction):
                final = item
    assert final is not None
    assert final.answer == "one two three four five six seven eight nine ten"
    assert len(chunks) > 1
    assert "".join(chunks).strip() == final.answer
    assert provider.requests[0].stream
    usage = tracker.get_total_tokens()[model]
    assert usage["prompt_tokens"] == prompt_tokens(
        provider.requests[0].body, model.split("/", 1)[1]
    )
