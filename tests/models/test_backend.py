"""DSPyBackend over real HTTP: answers, exact usage, cost, errors, sync programs, observers."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
import traceback
import uuid
from typing import Any

import dspy
import pytest
from _model_helpers import ENGINE_PROTOCOLS, MakeManager, model

from llm_server.core.errors import (
    ConfigurationError,
    ContextWindowExceededError,
    InputError,
    ModelCallError,
    ModelTimeoutError,
    OutputParseError,
    ProviderAuthError,
    ProviderBadRequestError,
    ProviderUnavailableError,
    RateLimitedError,
    RedactedCause,
)
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod
from llm_server.core.protocols import ModelBackend
from llm_server.core.telemetry import StepTiming, observing
from llm_server.core.tokens import count_message_tokens
from llm_server.testing import LocalProvider, RawReply

pytestmark = pytest.mark.anyio


def qa() -> Any:
    return dspy.Predict("question -> answer")


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_predict_returns_the_answer_with_exact_usage_and_cost(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str
) -> None:
    manager = make_manager({"m": model(protocol, engine)})
    backend = manager.single_attempt_backend(qa(), "m")

    output = await backend.predict({"question": "What is DSPy?"})

    assert isinstance(backend, ModelBackend)
    assert output.content.answer == "echo: What is DSPy?"
    assert output.model_id == "m"
    usage = output.usage
    assert usage is not None
    assert usage.method is TokenCountMethod.EXACT
    # The provider counts the messages it received with the model's tokenizer.
    (request,) = provider.requests
    messages = request.messages
    if protocol == "anthropic":
        messages = [{"role": "system", "content": request.body["system"]}, *messages]
    assert usage.input_tokens == count_message_tokens(messages, manager.model_info["m"].model_name)
    assert usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    price = manager.get_price("m")
    assert price is not None
    expected_cost = (
        usage.input_tokens * price.input_per_million
        + usage.output_tokens * price.output_per_million
    ) / 1e6
    assert output.cost_usd == pytest.approx(expected_cost)
    assert output.response_model == manager.model_info["m"].base_model
    assert output.finish_reasons in {("stop",), ("end_turn",)}
    assert output.latency_ms > 0
    assert (backend.last_prompt_tokens, backend.last_completion_tokens) == (
        usage.input_tokens,
        usage.output_tokens,
    )


@pytest.mark.parametrize(
    ("engine", "protocol"),
    # LiteLLM's Anthropic parser crashes on a reply without usage (real Anthropic always sends
    # it); that combination is covered by the error tests instead.
    [("auto", "openai"), ("auto", "anthropic"), ("litellm", "openai")],
)
async def test_missing_usage_is_estimated_and_labelled_so(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str
) -> None:
    manager = make_manager({"m": model(protocol, engine)})
    backend = manager.single_attempt_backend(qa(), "m")
    provider.usage = True
    exact = await backend.predict({"question": "count me"})
    provider.usage = False

    estimated = await backend.predict({"question": "count me"})

    assert exact.usage is not None
    assert estimated.usage is not None
    assert estimated.usage.method is TokenCountMethod.ESTIMATE
    # Counted offline from the same messages: close to the provider's exact numbers.
    assert estimated.usage.input_tokens == pytest.approx(exact.usage.input_tokens, rel=0.1)
    assert estimated.usage.output_tokens == pytest.approx(exact.usage.output_tokens, abs=3)
    assert estimated.cost_usd is not None


async def test_unknown_price_gives_no_cost_and_yaml_price_is_used(
    make_manager: MakeManager,
) -> None:
    manager = make_manager(
        {
            "unknown": {"model_name": "openai/house-model"},
            "priced": {
                "model_name": "openai/house-model",
                "pricing": {"input_per_million": 1000.0, "output_per_million": 2000.0},
            },
        }
    )

    unknown = await manager.single_attempt_backend(qa(), "unknown").predict({"question": "x"})
    priced = await manager.single_attempt_backend(qa(), "priced").predict({"question": "x"})

    assert unknown.usage is not None
    assert unknown.usage.method is TokenCountMethod.EXACT
    assert unknown.cost_usd is None
    assert priced.usage is not None
    expected = (priced.usage.input_tokens * 1000 + priced.usage.output_tokens * 2000) / 1e6
    assert priced.cost_usd == pytest.approx(expected)


async def test_each_successful_call_is_reported_to_the_observers(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"m": model("openai", "auto")})
    backend = manager.single_attempt_backend(qa(), "m")
    seen: list[ModelOutput] = []

    class Observer:
        def on_step(self, timing: StepTiming) -> None:
            pass

        def on_model_output(self, output: ModelOutput) -> None:
            seen.append(output)

    with observing(Observer()):
        output = await backend.predict({"question": "observe"})

    assert seen == [output]
    assert backend.get_lm_history()[-1]["usage"] == output.usage
    assert "observe" not in repr(backend.get_lm_history())  # no prompts kept


async def test_non_mapping_input_is_an_input_error(make_manager: MakeManager) -> None:
    backend = make_manager({"m": model("openai", "auto")}).single_attempt_backend(qa(), "m")
    with pytest.raises(InputError, match="mapping"):
        await backend.predict("just a string")  # type: ignore[arg-type]


# --- provider faults --------------------------------------------------------------------------

FAULTS: list[tuple[str, type[ModelCallError]]] = [
    ("rate_limit", RateLimitedError),
    ("server_error", ProviderUnavailableError),
    ("unavailable", ProviderUnavailableError),
    ("auth", ProviderAuthError),
    ("bad_request", ProviderBadRequestError),
    ("context_window", ContextWindowExceededError),
    ("malformed_json", ProviderUnavailableError),
    ("connection_reset", ProviderUnavailableError),
    (404, ProviderBadRequestError),
    (422, ProviderBadRequestError),
    (403, ProviderAuthError),
]


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
@pytest.mark.parametrize("case", FAULTS, ids=[str(fault) for fault, _ in FAULTS])
async def test_each_provider_fault_maps_to_our_error_after_one_attempt(
    make_manager: MakeManager,
    provider: LocalProvider,
    engine: str,
    protocol: str,
    case: tuple[str | int, type[ModelCallError]],
) -> None:
    fault, error = case
    manager = make_manager({"m": model(protocol, engine, api_key="sk-test-secret-key-123456")})
    backend = manager.single_attempt_backend(qa(), "m")
    provider.add_fault(fault, retry_after_s=7)  # type: ignore[arg-type]

    with pytest.raises(ModelCallError) as caught:
        await backend.predict({"question": "fail please"})

    assert type(caught.value) is error
    assert caught.value.model_id == "m"
    assert caught.value.__cause__ is not None
    assert "sk-test-secret-key-123456" not in str(caught.value)
    assert len(provider.requests) == 1  # DSPy's and LiteLLM's own retries are off
    if error is RateLimitedError:
        assert caught.value.retry_after_s == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_a_hanging_provider_times_out_after_the_model_timeout(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str
) -> None:
    manager = make_manager({"m": model(protocol, engine, timeout_s=0.2)})
    provider.add_fault("hang")

    with pytest.raises(ModelTimeoutError, match="did not answer in time"):
        await manager.single_attempt_backend(qa(), "m").predict({"question": "hang"})


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_a_refused_connection_is_provider_unavailable(
    make_manager: MakeManager, engine: str, protocol: str
) -> None:
    with LocalProvider() as gone:
        closed_base = gone.openai_api_base
    manager = make_manager({"m": model(protocol, engine, api_base=closed_base)})

    with pytest.raises(ProviderUnavailableError):
        await manager.single_attempt_backend(qa(), "m").predict({"question": "anyone?"})


@pytest.mark.parametrize(("engine", "protocol"), ENGINE_PROTOCOLS)
async def test_unparseable_answer_is_output_parse_error_without_a_second_call(
    make_manager: MakeManager, provider: LocalProvider, engine: str, protocol: str
) -> None:
    manager = make_manager({"m": model(protocol, engine)})
    provider.script(reply=RawReply("no field markers at all"))

    with pytest.raises(OutputParseError):
        await manager.single_attempt_backend(qa(), "m").predict({"question": "parse me"})

    assert len(provider.requests) == 1  # DSPy's JSONAdapter fallback is off


# --- programs without aforward ------------------------------------------------------------------


class SyncOnly(dspy.Module):  # type: ignore[misc]
    """A program with only forward(): Module.acall would fail on it."""

    def __init__(self) -> None:
        super().__init__()
        self.predict = dspy.Predict("question -> answer")
        self.threads: list[str] = []

    def forward(self, question: str) -> Any:
        self.threads.append(threading.current_thread().name)
        return self.predict(question=question)


@pytest.mark.parametrize("engine", ["auto", "litellm"])
async def test_program_without_aforward_runs_in_worker_threads_and_warns_once(
    make_manager: MakeManager, caplog: pytest.LogCaptureFixture, engine: str
) -> None:
    from llm_server.models import dspy_backend

    dspy_backend._warned_sync_classes.discard(SyncOnly)
    manager = make_manager({"m": model("openai", engine)})
    program = SyncOnly()
    backend = manager.single_attempt_backend(program, "m")

    with caplog.at_level(logging.WARNING, logger="llm_server.models.dspy_backend"):
        first = await backend.predict({"question": "one"})
        second = await backend.predict({"question": "two"})

    assert (first.content.answer, second.content.answer) == ("echo: one", "echo: two")
    assert first.usage is not None
    assert first.usage.method is TokenCountMethod.EXACT
    assert threading.main_thread().name not in program.threads
    warnings = [r for r in caplog.records if "without aforward" in r.getMessage()]
    assert len(warnings) == 1
    assert "SyncOnly" in warnings[0].getMessage()


async def test_sync_programs_are_bounded_by_blocking_workers(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    import anyio

    manager = make_manager({"m": model("openai", "auto")}, blocking_workers=2)
    provider.latency_s = 0.05
    program = SyncOnly()
    backend = manager.single_attempt_backend(program, "m")
    running = 0
    peak = 0
    lock = threading.Lock()
    original = program.forward

    def counting_forward(question: str) -> Any:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return original(question=question)
        finally:
            with lock:
                running -= 1

    program.forward = counting_forward  # type: ignore[method-assign]

    async with anyio.create_task_group() as group:
        for index in range(6):
            group.start_soon(backend.predict, {"question": f"q{index}"})

    assert peak == 2


async def test_max_connections_bounds_the_native_engines_pool(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    provider.latency_s = 0.2
    try:
        manager = make_manager({"m": model("openai", "auto", max_connections=2)})
        assert manager.model_info["m"].max_connections == 2
        backend = manager.single_attempt_backend(qa(), "m")
        started = time.perf_counter()
        await asyncio.gather(*(backend.predict({"question": f"q{i}"}) for i in range(6)))
        elapsed = time.perf_counter() - started
    finally:
        provider.latency_s = 0.0
    (engine,) = manager.get_lm("m")._engine_store.values()
    assert engine.config.max_connections == 2
    assert elapsed >= 0.55  # six 0.2 s calls through two connections: three waves


async def test_each_call_reports_its_wait_for_a_free_connection(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    """Six 0.2 s calls through two connections: the second wave waits for one call, the
    third for two."""
    provider.latency_s = 0.2
    run = uuid.uuid4().hex  # questions never asked before: no cache hit
    try:
        manager = make_manager({"m": model("openai", "auto", max_connections=2)})
        backend = manager.single_attempt_backend(qa(), "m")
        started = time.perf_counter()
        outputs = await asyncio.gather(
            *(backend.predict({"question": f"{run} q{i}"}) for i in range(6))
        )
        elapsed_ms = (time.perf_counter() - started) * 1000
    finally:
        provider.latency_s = 0.0
    waits = sorted(output.metadata["connection_wait_ms"] for output in outputs)
    assert waits[1] < 100  # the first wave found free connections
    assert waits[2] >= 180
    assert waits[4] >= waits[2] + 150
    assert waits[5] < elapsed_ms


async def test_an_idle_pool_reports_no_wait_and_litellm_reports_none(
    make_manager: MakeManager,
) -> None:
    manager = make_manager({"native": model("openai", "auto"), "lite": model("openai", "litellm")})
    native = await manager.single_attempt_backend(qa(), "native").predict({"question": "q"})
    assert native.metadata["connection_wait_ms"] < 50
    lite = await manager.single_attempt_backend(qa(), "lite").predict({"question": "q"})
    assert "connection_wait_ms" not in lite.metadata  # LiteLLM's own pool: not measured


async def test_max_connections_on_a_litellm_model_is_refused(make_manager: MakeManager) -> None:
    with pytest.raises(ConfigurationError, match="max_connections applies to DSPy's native"):
        make_manager({"m": model("openai", "litellm", max_connections=2)})


PLANTED = "sk-proj-PLANTEDkeyABCDEFGHIJ0123456789"


@pytest.mark.parametrize("engine", ["auto", "litellm"])
@pytest.mark.parametrize(("fault", "raised"), [(401, ProviderAuthError), (400, ModelCallError)])
async def test_a_provider_error_quoting_the_key_leaves_no_key_in_any_traceback(
    make_manager: MakeManager,
    provider: LocalProvider,
    engine: str,
    fault: int,
    raised: type[Exception],
) -> None:
    manager = make_manager({"m": model("openai", engine, api_key=PLANTED)})
    provider.add_fault(fault, message=f"Incorrect API key provided: {PLANTED}")
    with pytest.raises(raised) as info:
        await manager.single_attempt_backend(qa(), "m").predict({"question": "x"})
    error = info.value
    printed = "".join(traceback.format_exception(error))
    assert "Incorrect API key provided" in printed  # the provider's words are kept...
    for text in (str(error), repr(error), printed):
        assert "PLANTEDkey" not in text  # ...its key is not
    assert isinstance(error.__cause__, RedactedCause)
    assert error.__cause__.__cause__ is None
    assert error.__cause__.__context__ is None
    assert error.__context__ is None or error.__suppress_context__


async def test_a_prompt_that_cannot_fit_is_refused_before_any_request(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager({"m": model("openai", "auto", context_window=300, max_tokens=100)})
    backend = manager.reliable_backend(qa(), "m")
    assert (await backend.predict({"question": "short"})).content.answer  # fits: sent
    sent = len(provider.requests)
    with pytest.raises(ContextWindowExceededError) as info:
        await backend.predict({"question": "word " * 400})
    message = str(info.value)
    assert "model 'm'" in message
    assert "context window of 300 tokens" in message
    assert "max_tokens=100" in message
    assert re.search(r"the prompt is [\d,]+ tokens", message)
    assert len(provider.requests) == sent  # nothing left for the provider
    assert info.value.http_status == 413


async def test_a_fallback_with_a_larger_window_answers_a_long_prompt(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager(
        {
            "small": model("openai", "auto", context_window=300, fallbacks=["large"]),
            "large": model("openai", "auto", context_window=100_000),
        }
    )
    output = await manager.reliable_backend(qa(), "small").predict({"question": "word " * 400})
    assert output.model_id == "large"
    assert output.metadata["fallback_from"] == ["small"]
    assert len(provider.requests) == 1


@pytest.mark.parametrize("engine", ["auto", "litellm"])
async def test_a_calls_usage_also_reaches_an_enclosing_dspy_usage_tracker(
    make_manager: MakeManager, engine: str
) -> None:
    manager = make_manager({"m": model("openai", engine)})
    backend = manager.single_attempt_backend(qa(), "m")
    with dspy.track_usage() as tracker:
        output = await backend.predict({"question": "How many tokens?"})
    assert output.usage is not None
    model_name = manager.model_info["m"].model_name
    [entry] = tracker.usage_data[model_name]
    assert entry["prompt_tokens"] == output.usage.input_tokens
    assert entry["completion_tokens"] == output.usage.output_tokens
    assert tracker.get_total_tokens()[model_name]["total_tokens"] == output.usage.total_tokens


def test_the_call_tracker_bills_every_call_and_tracks_what_dspy_tracks() -> None:
    from pydantic import BaseModel

    from llm_server.models._request_scope import CallTracker

    class Details(BaseModel):
        cached_tokens: int

    tracker = CallTracker()
    tracker.add_usage(
        "openai/m", {"prompt_tokens": 7, "prompt_tokens_details": Details(cached_tokens=2)}
    )
    tracker.add_usage("openai/m", {})  # the provider reported none: billed all the same
    assert tracker.billed == [
        {"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 2}},
        {},
    ]
    assert tracker.usage_data == {
        "openai/m": [{"prompt_tokens": 7, "prompt_tokens_details": {"cached_tokens": 2}}]
    }
    tracker.billed[0]["prompt_tokens"] = 0  # one record's reader cannot change the other's
    assert tracker.usage_data["openai/m"][0]["prompt_tokens"] == 7
    with tracker.lock:
        tracker.close()
    tracker.add_usage("openai/m", {"prompt_tokens": 1})  # after the request gave up: ignored
    assert len(tracker.billed) == 2
    assert len(tracker.usage_data["openai/m"]) == 1
