"""The reliability stack around real DSPy backends, over real HTTP to the local provider.

Breakers and retries run on a FakeClock (reset timeouts and backoffs cost no time); the
HTTP requests are real, so ``provider.requests`` counts what actually reached the provider.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator

import dspy
import pytest

from llm_server.core.circuit_breaker import BreakerState, CircuitBreaker
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import CircuitOpenError, DeadlineExceededError, ProviderUnavailableError
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability import ReliableModel, RetryPolicy, build_reliable_backend
from llm_server.models.manager import ModelManager
from llm_server.testing import FakeClock, LocalProvider, StaticConfigProvider

pytestmark = pytest.mark.anyio

QUESTION = {"question": "is it up?"}


@pytest.fixture(scope="module")
def provider() -> Iterator[LocalProvider]:
    with LocalProvider() as local:
        yield local


@pytest.fixture
async def manager(provider: LocalProvider) -> AsyncIterator[ModelManager]:
    provider.clear_faults()
    provider.clear()
    models = {
        model_id: {"model_name": name, "engine": "auto", "api_base": base, "api_key": "sk-test"}
        for model_id, name, base in [
            ("primary", "openai/gpt-4o-mini", provider.openai_api_base),
            ("backup", "openai/gpt-4o", provider.openai_api_base),
        ]
    }
    built = ModelManager(
        config_provider=StaticConfigProvider(models), settings=FrameworkSettings(), environ={}
    )
    yield built
    await built.aclose()


class Stack:
    """The composed stack for 'primary' (optionally with 'backup'), on a fake clock."""

    def __init__(
        self,
        manager: ModelManager,
        *,
        fallback: bool = False,
        threshold: int = 3,
        attempts: int = 1,
        probes: int = 1,
        deadline_s: float = 30.0,
    ) -> None:
        self.clock = FakeClock()
        program = dspy.Predict("question -> answer")
        self.breakers = {
            model_id: CircuitBreaker(
                name=model_id,
                failure_threshold=threshold,
                reset_timeout=60,
                half_open_max_calls=probes,
                clock=self.clock,
            )
            for model_id in ("primary", "backup")
        }
        policy = RetryPolicy(max_attempts=attempts, initial_backoff_s=1.0, max_backoff_s=4.0)

        def reliable(model_id: str) -> ReliableModel:
            bare = manager.single_attempt_backend(program, model_id)
            return ReliableModel(bare, self.breakers[model_id], policy)

        self.backend: ModelBackend = build_reliable_backend(
            reliable("primary"),
            [reliable("backup")] if fallback else [],
            deadline_s=deadline_s,
            clock=self.clock,
            rng=random.Random(0),
        )


async def test_500s_open_the_breaker_which_half_opens_and_closes_on_success(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, threshold=3)
    provider.add_fault("server_error", first=3)
    for _ in range(3):
        with pytest.raises(ProviderUnavailableError):
            await stack.backend.predict(QUESTION)
    assert stack.breakers["primary"].state is BreakerState.OPEN
    with pytest.raises(CircuitOpenError):
        await stack.backend.predict(QUESTION)
    assert len(provider.requests) == 3  # the refused call never reached the provider
    stack.clock.advance(60)
    output = await stack.backend.predict(QUESTION)
    assert output.model_id == "primary"
    assert output.content.answer
    assert stack.breakers["primary"].state is BreakerState.CLOSED


async def test_retry_after_from_the_provider_is_honoured(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, attempts=3)
    provider.add_fault("rate_limit", first=1, retry_after_s=2)
    output = await stack.backend.predict(QUESTION)
    assert stack.clock.sleeps == [2.0]
    assert output.attempts == 2
    assert len(provider.requests) == 2


async def test_a_hanging_provider_hits_the_request_deadline(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, deadline_s=0.05)
    provider.add_fault("hang")
    with pytest.raises(DeadlineExceededError):
        await stack.backend.predict(QUESTION)
    # cancelled, not counted as a provider failure
    assert stack.breakers["primary"].snapshot().failures == 0


async def test_half_open_with_fifty_concurrent_requests_sends_exactly_n_probes(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, threshold=1, probes=2)
    provider.add_fault("server_error", first=1)
    with pytest.raises(ProviderUnavailableError):
        await stack.backend.predict(QUESTION)
    provider.clear()
    provider.add_latency(0.05)  # the probes are still in flight when the others arrive
    stack.clock.advance(60)
    results = await asyncio.gather(
        *(stack.backend.predict(QUESTION) for _ in range(50)), return_exceptions=True
    )
    assert len(provider.requests) == 2
    assert sum(isinstance(r, CircuitOpenError) for r in results) == 48
    assert stack.breakers["primary"].state is BreakerState.CLOSED


async def test_a_request_cancelled_mid_call_leaves_no_stuck_probe(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, threshold=1)
    provider.add_fault("server_error", first=1)
    with pytest.raises(ProviderUnavailableError):
        await stack.backend.predict(QUESTION)
    stack.clock.advance(60)
    provider.add_fault("hang", first=1)
    task = asyncio.create_task(stack.backend.predict(QUESTION))
    async with asyncio.timeout(5):
        # the provider runs in its own thread, so there is no event to await: poll briefly
        while len(provider.requests) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stack.breakers["primary"].state is BreakerState.HALF_OPEN
    assert (await stack.backend.predict(QUESTION)).model_id == "primary"
    assert stack.breakers["primary"].state is BreakerState.CLOSED


async def test_a_fallback_model_answers_when_the_primary_is_open(
    manager: ModelManager, provider: LocalProvider
) -> None:
    stack = Stack(manager, fallback=True, threshold=1)
    provider.add_fault("unavailable", model="gpt-4o-mini")
    first = await stack.backend.predict(QUESTION)  # primary fails, opens; backup answers
    second = await stack.backend.predict(QUESTION)  # primary refused without a request
    assert (first.model_id, second.model_id) == ("backup", "backup")
    assert second.metadata["fallback_from"] == ["primary"]
    assert [r.model for r in provider.requests].count("gpt-4o-mini") == 1
