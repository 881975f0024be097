"""Budgets per tenant in one process: periods, checks before a call, charges after it."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from llm_server.core.budgets import (
    ANY_TENANT,
    Budget,
    BudgetBackend,
    TenantBudgets,
    Usage,
    current_tenant,
    tenant_scope,
)
from llm_server.core.errors import BudgetExceededError, ProviderUnavailableError, RateLimitedError
from llm_server.core.model_config import ModelsConfig
from llm_server.core.model_interfaces import ModelOutput, TokenCountMethod, TokenUsage
from llm_server.core.reliability._budgets import period_key
from llm_server.testing import ScriptedBackend

pytestmark = pytest.mark.anyio

NOW = dt.datetime(2026, 11, 30, 23, 59, 30, tzinfo=dt.UTC).timestamp()


def answer(tokens: int = 100, cost: float | None = 0.01) -> ModelOutput:
    usage = TokenUsage(tokens - 10, 10, tokens, TokenCountMethod.EXACT)
    return ModelOutput(content="ok", model_id="m", usage=usage, cost_usd=cost)


@pytest.mark.parametrize(
    ("moment", "period", "key", "ends"),
    [
        (dt.datetime(2026, 11, 30, 23, 59, 30), "day", "d20261130", dt.datetime(2026, 12, 1)),
        (dt.datetime(2026, 11, 30, 0, 0, 0), "day", "d20261130", dt.datetime(2026, 12, 1)),
        (dt.datetime(2026, 12, 31, 12, 0, 0), "month", "m202612", dt.datetime(2027, 1, 1)),
        (dt.datetime(2028, 2, 29, 8, 0, 0), "month", "m202802", dt.datetime(2028, 3, 1)),
    ],
)
def test_periods_are_utc_days_and_months(
    moment: dt.datetime, period: str, key: str, ends: dt.datetime
) -> None:
    got_key, got_end = period_key(period, moment.replace(tzinfo=dt.UTC).timestamp())  # type: ignore[arg-type]
    assert got_key == key
    assert got_end == ends.replace(tzinfo=dt.UTC).timestamp()


def budgets(**by_tenant: dict[str, Budget]) -> TenantBudgets:
    return TenantBudgets(by_tenant, wall_clock=lambda: NOW)


async def test_a_tenant_over_its_request_budget_is_refused_until_the_period_renews() -> None:
    guarded = BudgetBackend(ScriptedBackend(default=answer()), budgets(acme={"day": Budget(2)}))
    with tenant_scope("acme"):
        await guarded.predict("a")
        await guarded.predict("b")
        with pytest.raises(BudgetExceededError) as caught:
            await guarded.predict("c")
    error = caught.value
    assert isinstance(error, RateLimitedError)  # a 429 with Retry-After
    assert error.error_type == "budget_exceeded"
    assert error.tenant == "acme"
    assert error.limit == "requests_per_day"
    assert error.retry_after_s == pytest.approx(30)  # 23:59:30 -> midnight UTC
    assert "tenant 'acme' spent its requests budget for this day (2 requests per day" in str(error)
    assert "renews at 2026-12-01 00:00 UTC" in str(error)
    assert guarded.wrapped.calls == 2  # type: ignore[attr-defined]  # the third never ran


async def test_cost_and_tokens_are_charged_exactly_after_each_call() -> None:
    limits = budgets(acme={"day": Budget(cost_usd=0.025), "month": Budget(tokens=1000)})
    guarded = BudgetBackend(ScriptedBackend([answer(300, 0.01)] * 5), limits)
    with tenant_scope("acme"):
        await guarded.predict("a")
        await guarded.predict("b")
        await guarded.predict("c")  # 0.02 spent before it: allowed, and it takes 0.03
        with pytest.raises(
            BudgetExceededError, match=r"cost_usd budget for this day \(\$0.025 per day"
        ):
            await guarded.predict("d")
    used = await limits.usage("acme")
    assert used["day"][0] == Usage(3, 900, pytest.approx(0.03))  # type: ignore[arg-type]
    assert used["month"][0].tokens == 900


async def test_a_failed_call_is_charged_one_request() -> None:
    limits = budgets(acme={"day": Budget(requests=10)})
    guarded = BudgetBackend(ScriptedBackend([ProviderUnavailableError("503")]), limits)
    with tenant_scope("acme"), pytest.raises(ProviderUnavailableError):
        await guarded.predict("a")
    assert (await limits.usage("acme"))["day"][0] == Usage(1, 0, 0.0)


async def test_the_default_budget_applies_to_tenants_without_their_own() -> None:
    limits = budgets(**{ANY_TENANT: {"day": Budget(1)}, "vip": {"day": Budget(100)}})
    guarded = BudgetBackend(ScriptedBackend(default=answer()), limits)
    for tenant in ("a", "b"):  # each tenant has its own count under the default budget
        with tenant_scope(tenant):
            await guarded.predict("x")
            with pytest.raises(BudgetExceededError):
                await guarded.predict("x")
    with tenant_scope("vip"):
        for _ in range(5):
            await guarded.predict("x")


async def test_without_a_tenant_no_budget_applies() -> None:
    limits = budgets(**{ANY_TENANT: {"day": Budget(1)}})
    backend = ScriptedBackend(default=answer())
    guarded = BudgetBackend(backend, limits)
    assert current_tenant() is None
    for _ in range(3):
        await guarded.predict("x")
    assert backend.calls == 3


async def test_budgets_set_in_code_apply_at_once() -> None:
    limits = budgets()
    guarded = BudgetBackend(ScriptedBackend(default=answer()), limits)
    with tenant_scope("acme"):
        await guarded.predict("x")
        limits.set_budget("acme", "day", Budget(requests=1))
        await guarded.predict("x")  # counting starts once a budget exists
        with pytest.raises(BudgetExceededError):
            await guarded.predict("x")
        limits.set_budget("acme", "day", None)
        await guarded.predict("x")


def test_the_yaml_budgets_are_validated() -> None:
    base = {"models": {"m": {"model_name": "openai/m"}}}
    config = ModelsConfig.model_validate(
        {**base, "budgets": {"*": {"per_day": {"requests": 10, "cost_usd": 5}}}}
    )
    assert config.budgets["*"].per_day is not None
    with pytest.raises(ValidationError, match="per_day, per_month or both"):
        ModelsConfig.model_validate({**base, "budgets": {"acme": {}}})
    with pytest.raises(ValidationError, match="per_week"):
        ModelsConfig.model_validate({**base, "budgets": {"acme": {"per_week": {"requests": 1}}}})
    with pytest.raises(ValidationError, match="greater than 0"):
        ModelsConfig.model_validate({**base, "budgets": {"a": {"per_day": {"cost_usd": 0}}}})
