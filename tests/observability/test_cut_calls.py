"""Honest books: calls cut after they left are counted, retries that never left are not."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import dspy
import pytest
from _otel_helpers import metric_points
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from llm_server.core.budgets import Budget, tenant_scope
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import DeadlineExceededError, ProviderUnavailableError
from llm_server.core.metrics_wrappers import PerformanceMetrics
from llm_server.core.model_interfaces import TokenCountMethod
from llm_server.core.opentelemetry_integration import Telemetry
from llm_server.core.reliability import RetryPolicy
from llm_server.core.reliability._retry import retry_call
from llm_server.core.tokens import count_message_tokens
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
async def manager(
    provider: LocalProvider, make_telemetry: Callable[..., Telemetry]
) -> AsyncIterator[ModelManager]:
    provider.clear_faults()
    provider.clear()
    models = {
        "m": {
            "model_name": "openai/gpt-4o-mini",
            "api_base": provider.openai_api_base,
            "api_key": "sk-test",
            "retry": {"max_attempts": 1},
        }
    }
    built = ModelManager(
        config_provider=StaticConfigProvider(models),
        settings=FrameworkSettings(request_deadline_s=0.3),
        environ={},
        telemetry=make_telemetry(),
    )
    yield built
    await built.aclose()


async def test_a_call_cut_by_the_deadline_after_it_left_is_on_the_books(
    manager: ModelManager, provider: LocalProvider, reader: InMemoryMetricReader
) -> None:
    provider.add_fault("hang")  # the provider received it and will bill it; no answer comes
    backend = manager.reliable_backend(dspy.Predict("question -> answer"), "m")
    metrics = PerformanceMetrics()
    with pytest.raises(DeadlineExceededError):
        await backend.predict({"question": "will this be billed?"})

    (sent,) = provider.requests
    expected = count_message_tokens(sent.body["messages"], "openai/gpt-4o-mini")
    (cut,) = metrics.model_outputs
    assert cut.usage is not None
    assert cut.usage.method is TokenCountMethod.CUT_ESTIMATE
    assert (cut.usage.input_tokens, cut.usage.output_tokens) == (expected, 0)
    assert cut.cost_usd is not None
    assert cut.cost_usd > 0
    summary = metrics.get_summary()["tokens"]
    assert (summary["input"], summary["method"]) == (expected, "cut_input_estimate")

    points = metric_points(reader)
    assert [p.value for p in points["llm_server.client.cut_calls"]] == [1]
    (tokens,) = points["gen_ai.client.token.usage"]
    assert (tokens.attributes["gen_ai.token.type"], tokens.sum) == ("input", expected)
    assert points["llm_server.client.cost_usd"][0].value == pytest.approx(cut.cost_usd)


async def test_a_request_cancelled_mid_call_as_a_client_disconnect_does_is_on_the_books(
    manager: ModelManager, provider: LocalProvider, reader: InMemoryMetricReader
) -> None:
    provider.add_fault("hang")
    backend = manager.reliable_backend(dspy.Predict("question -> answer"), "m")

    async def request() -> list[Any]:
        metrics = PerformanceMetrics()
        try:
            await backend.predict({"question": "anyone there?"})
        except asyncio.CancelledError:
            return list(metrics.model_outputs)
        raise AssertionError("not cancelled")

    task = asyncio.create_task(request())
    for _ in range(400):  # bounded: 2 s at most
        if provider.requests:
            break
        await asyncio.sleep(0.005)
    task.cancel()  # what Starlette does to the endpoint when the client goes away
    (cut,) = await task
    assert cut.usage.method is TokenCountMethod.CUT_ESTIMATE
    assert [p.value for p in metric_points(reader)["llm_server.client.cut_calls"]] == [1]


async def test_a_call_cancelled_before_it_left_bills_nothing(
    manager: ModelManager, provider: LocalProvider, reader: InMemoryMetricReader
) -> None:
    manager.breakers["m"].force_open()
    backend = manager.reliable_backend(dspy.Predict("question -> answer"), "m")
    metrics = PerformanceMetrics()
    with pytest.raises(Exception, match="open"):
        await backend.predict({"question": "refused"})
    assert metrics.model_outputs == ()
    assert "llm_server.client.cut_calls" not in metric_points(reader)
    assert provider.requests == []


class _Longest(random.Random):
    """Jitter that always picks the longest backoff."""

    def uniform(self, a: float, b: float) -> float:
        return b


async def test_a_retry_cut_during_its_backoff_was_never_sent_and_is_not_counted() -> None:
    reported: list[int] = []
    attempts = 0

    async def attempt() -> str:
        nonlocal attempts
        attempts += 1
        raise ProviderUnavailableError("503", model_id="m")

    policy = RetryPolicy(max_attempts=3, initial_backoff_s=5.0, max_backoff_s=5.0)
    call = retry_call(
        attempt, policy=policy, rng=_Longest(), on_retry=lambda n, e, d: reported.append(n)
    )
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(call, timeout=0.05)  # the deadline ends the 5 s backoff
    assert attempts == 1
    assert reported == []


async def test_a_retry_is_reported_when_it_is_sent() -> None:
    reported: list[tuple[int, float]] = []
    outcomes: list[Exception | None] = [ProviderUnavailableError("503", model_id="m"), None]

    async def attempt() -> str:
        error = outcomes.pop(0)
        assert reported == ([] if error else [(1, 0.0)])  # told before the retry is made
        if error is not None:
            raise error
        return "ok"

    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.0, max_backoff_s=0.0)
    result = await retry_call(
        attempt, policy=policy, on_retry=lambda n, e, d: reported.append((n, d))
    )
    assert result == "ok"
    assert reported == [(1, 0.0)]


class _SyncOnly(dspy.Module):
    """A program without aforward: it runs in a worker thread, which a deadline abandons."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = dspy.Predict("question -> answer")

    def forward(self, question: str) -> dspy.Prediction:
        return self.answer(question=question)


async def test_a_sync_programs_call_cut_by_the_deadline_is_on_the_books_once(
    manager: ModelManager, provider: LocalProvider, reader: InMemoryMetricReader
) -> None:
    async def late(request: Any) -> str:
        await asyncio.sleep(0.8)  # past the 0.3 s deadline; then answered (and billed)
        return "too late"

    provider.script(reply=late)
    manager.budgets.set_budget("acme", "day", Budget(tokens=10**9))
    backend = manager.reliable_backend(_SyncOnly(), "m")
    metrics = PerformanceMetrics()
    try:
        with tenant_scope("acme"), pytest.raises(DeadlineExceededError):
            await backend.predict({"question": "will this be billed?"})
        for _ in range(40):  # the abandoned thread's call ends (bounded: 2 s)
            if provider.billed:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # and records what it got, if it still may
    finally:
        provider.script(reply=None)

    (sent,) = provider.requests
    expected = count_message_tokens(sent.body["messages"], "openai/gpt-4o-mini")
    (cut,) = metrics.model_outputs  # was (): the call in the thread was on no books
    assert cut.usage is not None
    assert cut.usage.method is TokenCountMethod.CUT_ESTIMATE
    assert (cut.usage.input_tokens, cut.usage.output_tokens) == (expected, 0)
    (tokens,) = metric_points(reader)["gen_ai.client.token.usage"]
    assert tokens.sum == expected
    (used, _) = (await manager.budgets.usage("acme"))["day"]
    assert used.tokens == expected
