"""The budget bound under concurrency, in one process: reserve at admission, settle after.

Every model call goes over real HTTP to a :class:`LocalProvider`; the price makes each call's
estimate exactly $1 (``max_tokens`` 100 at $10,000 per million output tokens, prompts free).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import dspy
import pytest

from llm_server.core.budgets import Budget, BudgetBackend, TenantBudgets, Usage, tenant_scope
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import BudgetExceededError
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.models.manager import ModelManager
from llm_server.testing import LocalProvider, ScriptedBackend, StaticConfigProvider

pytestmark = pytest.mark.anyio

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC).timestamp()


class Summarize(dspy.Signature):
    """Summarize the text in one sentence."""

    text: str = dspy.InputField()
    summary: str = dspy.OutputField()


@pytest.fixture
def provider() -> Iterator[LocalProvider]:
    with LocalProvider(latency_s=0.3) as local:  # calls overlap: all 50 are in flight at once
        yield local


def priced_models(
    provider: LocalProvider, budgets: dict[str, Any], pricing: dict[str, float] | None = None
) -> StaticConfigProvider:
    return StaticConfigProvider(
        {
            "m": {
                "model_name": "openai/gpt-4o-mini",
                "api_base": provider.openai_api_base,
                "api_key": "sk-test",
                "max_tokens": 100,
                "pricing": pricing or {"input_per_million": 0, "output_per_million": 10_000},
            }
        },
        budgets=budgets,
    )


def manager_for(provider: LocalProvider, tmp_path: Path, **values: Any) -> ModelManager:
    settings = FrameworkSettings(
        otel_enabled=False, llm_programs_dir=tmp_path / "programs", retry_max_attempts=1, **values
    )
    return ModelManager(
        config_provider=priced_models(provider, {"acme": {"per_day": {"cost_usd": 5}}}),
        settings=settings,
    )


async def fifty_concurrent_calls(manager: ModelManager) -> tuple[int, int]:
    """50 concurrent calls for tenant acme: (served, refused with budget_exceeded)."""
    backend = manager.reliable_backend(dspy.Predict(Summarize), "m")
    served = refused = 0

    async def one(index: int) -> None:
        nonlocal served, refused
        with tenant_scope("acme"):
            try:
                await backend.predict({"text": f"text number {index}"})
            except BudgetExceededError:
                refused += 1
            else:
                served += 1

    async with anyio.create_task_group() as tasks:
        for index in range(50):
            tasks.start_soon(one, index)
    return served, refused


async def test_fifty_concurrent_one_dollar_calls_against_five_dollars_admit_five(
    provider: LocalProvider, tmp_path: Path
) -> None:
    manager = manager_for(provider, tmp_path)
    try:
        served, refused = await fifty_concurrent_calls(manager)
        # each admitted call holds its $1 estimate until it ends: the sixth finds $5 held
        assert len(provider.requests) == served == 5
        assert refused == 45
        used = (await manager.budgets.usage("acme"))["day"][0]
        assert used.requests == 5
        assert 0 < used.cost_usd <= 5.0  # charged what was used, never more than the budget
    finally:
        await manager.aclose()


def answer(tokens: int, cost: float) -> ModelOutput:
    usage = TokenUsage(tokens - 10, 10, tokens, TokenCountMethod.EXACT)
    return ModelOutput(content="ok", model_id="m", usage=usage, cost_usd=cost)


@pytest.mark.parametrize(
    ("budget", "first", "refused_limit"),
    [
        (Budget(cost_usd=0.5), answer(100, 0.5), "cost_usd_per_day"),
        (Budget(tokens=300), answer(300, 0.01), "tokens_per_day"),
    ],
)
async def test_at_exactly_the_limit_the_next_call_is_refused(
    budget: Budget, first: ModelOutput, refused_limit: str
) -> None:
    limits = TenantBudgets({"acme": {"day": budget}}, wall_clock=lambda: NOW)
    guarded = BudgetBackend(ScriptedBackend([first, answer(10, 0.0)]), limits)
    with tenant_scope("acme"):
        await guarded.predict("a")  # uses the whole budget, exactly
        with pytest.raises(BudgetExceededError) as caught:
            await guarded.predict("b")
    assert caught.value.limit == refused_limit
    assert guarded.wrapped.calls == 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("budget", "first"),
    [
        (Budget(cost_usd=0.5), answer(100, 0.49)),
        (Budget(tokens=300), answer(299, 0.01)),
    ],
)
async def test_just_under_the_limit_one_more_call_is_admitted(
    budget: Budget, first: ModelOutput
) -> None:
    limits = TenantBudgets({"acme": {"day": budget}}, wall_clock=lambda: NOW)
    guarded = BudgetBackend(ScriptedBackend([first, answer(10, 0.0)]), limits)
    with tenant_scope("acme"):
        await guarded.predict("a")
        await guarded.predict("b")
    assert guarded.wrapped.calls == 2  # type: ignore[attr-defined]


async def test_a_refusal_for_room_held_by_calls_in_flight_says_so_and_retries_soon() -> None:
    limits = TenantBudgets({"acme": {"day": Budget(requests=1)}}, wall_clock=lambda: NOW)
    in_flight = await limits.reserve("acme")
    assert in_flight is not None
    with pytest.raises(BudgetExceededError) as caught:
        await limits.reserve("acme")
    assert "calls in flight hold the rest" in str(caught.value)
    assert caught.value.retry_after_s == 1.0  # not midnight: the hold may come back
    limits.settle(in_flight, Usage(1))
    with pytest.raises(BudgetExceededError) as spent:
        await limits.reserve("acme")
    assert "spent its requests budget" in str(spent.value)
    assert spent.value.retry_after_s == pytest.approx(12 * 3600)  # noon -> midnight UTC


async def test_a_settled_reservation_releases_what_it_held() -> None:
    limits = TenantBudgets({"acme": {"day": Budget(requests=2)}}, wall_clock=lambda: NOW)
    reservation = await limits.reserve("acme")
    assert reservation is not None
    assert limits.held("acme", "d20261130") == Usage(requests=1)
    limits.settle(reservation, Usage(1, 50, 0.1))
    limits.settle(reservation, Usage(1, 50, 0.1))  # twice: charged once
    assert limits.held("acme", "d20261130") == Usage()
    assert (await limits.usage("acme"))["day"][0] == Usage(1, 50, 0.1)


class SyncSummarizer(dspy.Module):  # type: ignore[misc]  # dspy is untyped
    """A program with only ``forward``: served in worker threads, its model calls synchronous."""

    def __init__(self) -> None:
        super().__init__()
        self.summarize = dspy.Predict(Summarize)

    def forward(self, text: str) -> Any:
        return self.summarize(text=text)


async def test_synchronous_programs_hold_their_model_calls_estimates_too(
    provider: LocalProvider, tmp_path: Path
) -> None:
    # the price is all in the prompt, so each call costs exactly its estimate (about $1.2)
    config = priced_models(
        provider,
        {"acme": {"per_day": {"cost_usd": 5}}},
        {"input_per_million": 10_000, "output_per_million": 0},
    )
    settings = FrameworkSettings(
        otel_enabled=False, llm_programs_dir=tmp_path / "programs", retry_max_attempts=1
    )
    manager = ModelManager(config_provider=config, settings=settings)
    backend = manager.reliable_backend(SyncSummarizer(), "m")
    served = 0

    async def one(index: int) -> None:
        nonlocal served
        with tenant_scope("acme"):
            try:
                await backend.predict({"text": f"text number {index}"})
            except BudgetExceededError:
                return
            served += 1

    try:
        async with anyio.create_task_group() as tasks:
            for index in range(20):
                tasks.start_soon(one, index)
        used = (await manager.budgets.usage("acme"))["day"][0]
        assert served == len(provider.requests) <= 5
        assert used.cost_usd < 5 + 1.5  # at most one call's estimate over the budget
    finally:
        await manager.aclose()
