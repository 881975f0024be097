"""The parse policy over real HTTP: re-asks, the JSON fallback and the truncation re-ask, each
billed and reported; none by default; refusals, open breakers and the deadline stop them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import dspy
import pytest
from _model_helpers import ENGINES, MakeManager

from llm_server.core.circuit_breaker import BreakerState
from llm_server.core.errors import (
    DeadlineExceededError,
    ModelRefusedError,
    OutputParseError,
    OutputTruncatedError,
)
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.model_interfaces import TokenCountMethod
from llm_server.testing import LocalProvider, RawReply, RecordedRequest
from llm_server.testing._provider_replies import ReplyValue

pytestmark = pytest.mark.anyio

PROGRAM = "question -> answer: str, confidence: float"
GARBAGE = RawReply("no field markers at all")
CUT = RawReply("[[ ## answer ## ]]\nThe beginning of", finish_reason="length")
REFUSED = RawReply(None, refusal="No.")
VALID: dict[str, Any] = {"answer": "fine", "confidence": 0.9}


def in_turn(*replies: ReplyValue) -> Callable[[RecordedRequest], ReplyValue]:
    """Each request gets the next reply; the last one repeats."""
    queue: Iterator[ReplyValue] = iter(replies)
    last: list[ReplyValue] = [replies[-1]]

    def reply(request: RecordedRequest) -> ReplyValue:
        last[0] = next(queue, last[0])
        return last[0]

    return reply


def model(engine: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": "openai/gpt-4o-mini", "engine": engine, "max_tokens": 100, **extra}


def assert_all_billed_reported(metrics: PerformanceMetrics, provider: LocalProvider) -> None:
    usage = metrics.usage()
    assert usage is not None
    assert usage.method is TokenCountMethod.EXACT
    assert (usage.input_tokens, usage.output_tokens) == provider.billed_tokens


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("reply", [GARBAGE, CUT, REFUSED, RawReply("")], ids=str)
async def test_by_default_no_answer_is_asked_twice(
    make_manager: MakeManager, provider: LocalProvider, engine: str, reply: RawReply
) -> None:
    provider.script(reply=reply)
    backend = make_manager({"m": model(engine)}).reliable_backend(dspy.Predict(PROGRAM), "m")

    with pytest.raises(OutputParseError):
        await backend.predict({"question": "q"})

    assert len(provider.requests) == 1


@pytest.mark.parametrize("engine", ENGINES)
async def test_reasks_answer_and_every_attempt_is_billed_and_reported(
    make_manager: MakeManager, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=in_turn(GARBAGE, RawReply(""), VALID))
    manager = make_manager({"m": model(engine, parse_policy={"reasks": 2})})
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    metrics = PerformanceMetrics()

    output = await backend.predict({"question": "q"})

    assert output.content.confidence == 0.9
    assert len(provider.requests) == 3
    assert output.metadata["answer_attempts"] == {
        "unparseable_output": 1,
        "empty_output": 1,
        "ok": 1,
    }
    assert metrics.answer_attempts() == {"unparseable_output": 1, "empty_output": 1, "ok": 1}
    assert_all_billed_reported(metrics, provider)


@pytest.mark.parametrize("engine", ENGINES)
async def test_when_the_reasks_run_out_the_last_kind_is_raised_with_all_attempts_billed(
    make_manager: MakeManager, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=GARBAGE)
    manager = make_manager({"m": model(engine, parse_policy={"reasks": 1})})
    metrics = PerformanceMetrics()

    with pytest.raises(OutputParseError):
        await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    assert len(provider.requests) == 2
    assert metrics.answer_attempts() == {"unparseable_output": 2}
    assert_all_billed_reported(metrics, provider)


@pytest.mark.parametrize("engine", ENGINES)
async def test_json_fallback_asks_once_with_the_json_adapter(
    make_manager: MakeManager, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=in_turn(GARBAGE, VALID))
    manager = make_manager({"m": model(engine, parse_policy={"json_fallback": True})})
    metrics = PerformanceMetrics()

    output = await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    assert output.content.answer == "fine"
    first, second = provider.requests
    assert "[[ ## answer ## ]]" in first.messages[-1]["content"]
    assert "JSON object" in second.messages[-1]["content"]
    assert metrics.answer_attempts() == {"unparseable_output": 1, "ok": 1}
    assert_all_billed_reported(metrics, provider)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_cut_answer_is_asked_again_with_twice_the_max_tokens_up_to_the_cap(
    make_manager: MakeManager, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=CUT)
    policy = {"truncation_max_tokens": 300}
    manager = make_manager({"m": model(engine, parse_policy=policy)})
    metrics = PerformanceMetrics()

    with pytest.raises(OutputTruncatedError) as caught:
        await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    sent = [request.body.get("max_tokens") or request.body.get("max_completion_tokens")
            for request in provider.requests]  # fmt: skip
    assert sent == [100, 200, 300]
    assert caught.value.max_tokens == 300
    assert metrics.answer_attempts() == {"output_truncated": 3}
    assert_all_billed_reported(metrics, provider)


@pytest.mark.parametrize("engine", ENGINES)
async def test_a_refusal_is_never_asked_again(
    make_manager: MakeManager, provider: LocalProvider, engine: str
) -> None:
    provider.script(reply=REFUSED)
    policy = {"reasks": 3, "json_fallback": True}
    manager = make_manager({"m": model(engine, parse_policy=policy)})

    with pytest.raises(ModelRefusedError):
        await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    assert len(provider.requests) == 1


async def test_no_reask_goes_to_a_model_whose_breaker_would_refuse(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager({"m": model("auto", parse_policy={"reasks": 3})})

    def open_then_garbage(request: RecordedRequest) -> ReplyValue:
        manager.breakers["m"].force_open()  # other requests tripped it meanwhile
        return GARBAGE

    provider.script(reply=open_then_garbage)

    with pytest.raises(OutputParseError):
        await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    assert len(provider.requests) == 1


async def test_parse_failures_never_trip_the_breaker(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    manager = make_manager(
        {"m": model("auto", parse_policy={"reasks": 1}, circuit_breaker={"failure_threshold": 2})}
    )
    backend = manager.reliable_backend(dspy.Predict(PROGRAM), "m")
    provider.script(reply=GARBAGE)
    for _ in range(5):
        with pytest.raises(OutputParseError):
            await backend.predict({"question": "q"})
    provider.script(reply=VALID)

    output = await backend.predict({"question": "q"})

    assert output.content.answer == "fine"
    assert manager.breakers["m"].state is BreakerState.CLOSED


async def test_reasks_stop_at_the_request_deadline_and_what_was_billed_stays_reported(
    make_manager: MakeManager, provider: LocalProvider
) -> None:
    provider.script(reply=GARBAGE)
    provider.latency_s = 0.15
    manager = make_manager({"m": model("auto", parse_policy={"reasks": 5})}, request_deadline_s=0.4)
    metrics = PerformanceMetrics()

    with pytest.raises(DeadlineExceededError):
        await manager.reliable_backend(dspy.Predict(PROGRAM), "m").predict({"question": "q"})

    answered = len(provider.billed)
    assert 1 <= answered < len(provider.requests) <= 3  # the last one was cut in flight
    exact = [o for o in metrics.model_outputs if o.metadata.get("outcome")]
    cut = [o for o in metrics.model_outputs if o.metadata.get("cut")]
    assert len(exact) == answered
    assert len(cut) == 1
    billed_in, billed_out = provider.billed_tokens
    assert sum(o.usage.input_tokens for o in exact if o.usage) == billed_in
    assert sum(o.usage.output_tokens for o in exact if o.usage) == billed_out
