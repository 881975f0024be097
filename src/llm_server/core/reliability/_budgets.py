"""Spending and usage budgets per tenant: requests, tokens and cost per UTC day or month.

The host says who the caller is (:func:`tenant_scope`, :func:`set_tenant`, or the FastAPI
dependency :func:`llm_server.fastapi.tenant_header`); every model call made for that tenant is
checked against its budgets before it starts and charged after it with its exact usage and
cost (:class:`BudgetBackend`, the outermost layer of the model-call stack). Checking reads a
local view (no round trip once the tenant's period is known); charges are written by the
fleet's sync thread when Redis is configured, so a fleet may overshoot a budget by the calls
it admitted in the last second.
"""

from __future__ import annotations

import calendar
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from llm_server.core.errors import BudgetExceededError, ConfigurationError
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._wrapper import BackendWrapper
from llm_server.core.telemetry._observation import pop_observer, push_observer

__all__ = [
    "ANY_TENANT",
    "Budget",
    "BudgetBackend",
    "LocalUsageCounters",
    "Period",
    "TenantBudgets",
    "Usage",
    "UsageCounters",
    "current_tenant",
    "set_tenant",
    "tenant_scope",
]

Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")
ANY_TENANT = "*"
"""The budget key that applies to every tenant without a budget of its own."""

_tenant: ContextVar[str | None] = ContextVar("llm_server_tenant", default=None)


def current_tenant() -> str | None:
    """The tenant the current request is for (``None``: no budget applies)."""
    return _tenant.get()


def set_tenant(tenant_id: str | None) -> Token[str | None]:
    """Say who the current request is for, until the request (its context) ends.

    Returns:
        A token for ``ContextVar.reset`` (not needed inside a request: its context ends).
    """
    return _tenant.set(tenant_id)


@contextmanager
def tenant_scope(tenant_id: str | None) -> Iterator[None]:
    """Model calls made inside the block are checked against and charged to ``tenant_id``."""
    token = _tenant.set(tenant_id)
    try:
        yield
    finally:
        _tenant.reset(token)


@dataclass(frozen=True, slots=True)
class Budget:
    """What a tenant may use in one period (``None``: no limit on that).

    Attributes:
        requests: Model calls.
        tokens: Tokens, prompt plus completion, as the provider reported them.
        cost_usd: Cost in USD (calls whose price is unknown cost nothing here).
    """

    requests: int | None = None
    tokens: int | None = None
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    """What a tenant used in one period."""

    requests: int = 0
    tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.requests + other.requests,
            self.tokens + other.tokens,
            self.cost_usd + other.cost_usd,
        )


def period_key(period: Period, now: float) -> tuple[str, float]:
    """The UTC period containing ``now`` (``"d20261130"``, ``"m202611"``) and when it ends."""
    moment = dt.datetime.fromtimestamp(now, tz=dt.UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return f"d{moment:%Y%m%d}", (start + dt.timedelta(days=1)).timestamp()
    days = calendar.monthrange(moment.year, moment.month)[1]
    start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return f"m{moment:%Y%m}", (start + dt.timedelta(days=days)).timestamp()


@runtime_checkable
class UsageCounters(Protocol):
    """Where tenants' usage is counted: this process, or Redis for a fleet."""

    async def usage(self, tenant: str, key: str) -> tuple[Usage, bool]:
        """The tenant's usage in period ``key`` as known here, and whether it is the fleet's."""
        ...

    def charge(self, tenant: str, key: str, usage: Usage, expires_at: float) -> None:
        """Add ``usage`` (never waits; kept until written when the store is remote)."""
        ...


class LocalUsageCounters:
    """Usage counted in this process (the default)."""

    def __init__(self) -> None:
        self._usage: dict[tuple[str, str], tuple[Usage, float]] = {}
        self._lock = threading.Lock()

    async def usage(self, tenant: str, key: str) -> tuple[Usage, bool]:
        """The tenant's usage in the period."""
        entry = self._usage.get((tenant, key))
        return (entry[0] if entry else Usage()), False

    def charge(self, tenant: str, key: str, usage: Usage, expires_at: float) -> None:
        """Add usage; periods that ended are forgotten."""
        now = time.time()
        with self._lock:
            old = self._usage.get((tenant, key))
            self._usage[(tenant, key)] = ((old[0] if old else Usage()) + usage, expires_at)
            if len(self._usage) > 1024:  # forget ended periods now and then
                for stale in [k for k, (_, end) in self._usage.items() if end <= now]:
                    del self._usage[stale]


class TenantBudgets:
    """Budgets per tenant and period, and what each tenant used.

    Args:
        budgets: Tenant id (or :data:`ANY_TENANT`) -> period -> :class:`Budget`.
        counters: Where usage is counted (default: this process).
        wall_clock: Unix time (inject a fixed one in tests).

    Raises:
        ConfigurationError: A period is not ``day`` or ``month``.
    """

    def __init__(
        self,
        budgets: Mapping[str, Mapping[str, Budget]] | None = None,
        *,
        counters: UsageCounters | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._budgets: dict[str, dict[Period, Budget]] = {}
        for tenant, periods in (budgets or {}).items():
            for period, budget in periods.items():
                self.set_budget(tenant, period, budget)
        self.counters: UsageCounters = counters or LocalUsageCounters()
        self._now = wall_clock
        self.refused_fleet = 0
        """Calls refused so far on the fleet's usage (for metrics)."""
        self.refused_local = 0
        """Calls refused so far on this process's view alone."""

    def set_budget(self, tenant: str, period: str, budget: Budget | None) -> None:
        """Give ``tenant`` (or :data:`ANY_TENANT`) a budget for ``period`` (``None``: remove).

        Raises:
            ConfigurationError: ``period`` is not ``day`` or ``month``.
        """
        if period not in PERIODS:
            raise ConfigurationError(
                f"budget of tenant {tenant!r}: period must be 'day' or 'month' (got {period!r})"
            )
        periods = self._budgets.setdefault(tenant, {})
        if budget is None:
            periods.pop(period, None)
        else:
            periods[period] = budget

    def budgets_for(self, tenant: str) -> dict[Period, Budget]:
        """The tenant's budgets per period (its own, else :data:`ANY_TENANT`'s)."""
        return self._budgets.get(tenant) or self._budgets.get(ANY_TENANT) or {}

    @property
    def configured(self) -> bool:
        """Whether any budget is set."""
        return any(self._budgets.values())

    async def check(self, tenant: str) -> None:
        """Refuse a call the tenant's budgets have no room for.

        Raises:
            BudgetExceededError: A budget of the current period is spent.
        """
        now = self._now()
        for period, budget in self.budgets_for(tenant).items():
            key, ends = period_key(period, now)
            used, fleet = await self.counters.usage(tenant, key)
            spent = _spent(budget, used)
            if spent is not None:
                if fleet:
                    self.refused_fleet += 1
                else:
                    self.refused_local += 1
                what, limit = spent
                scope = "the fleet's" if fleet else "this process's"
                raise BudgetExceededError(
                    f"tenant {tenant!r} spent its {what} budget for this {period} "
                    f"({limit} per {period}, by {scope} count); it renews at "
                    f"{dt.datetime.fromtimestamp(ends, tz=dt.UTC):%Y-%m-%d %H:%M} UTC",
                    tenant=tenant,
                    limit=f"{what}_per_{period}",
                    retry_after_s=max(1.0, ends - now),
                    fleet=fleet,
                )

    def charge(self, tenant: str, usage: Usage) -> None:
        """Charge a finished call to every period the tenant has a budget for."""
        now = self._now()
        for period in self.budgets_for(tenant):
            key, ends = period_key(period, now)
            self.counters.charge(tenant, key, usage, ends)

    async def usage(self, tenant: str) -> dict[Period, tuple[Usage, Budget]]:
        """The tenant's usage and budget in each budgeted period, as known here."""
        now = self._now()
        out: dict[Period, tuple[Usage, Budget]] = {}
        for period, budget in self.budgets_for(tenant).items():
            used, _ = await self.counters.usage(tenant, period_key(period, now)[0])
            out[period] = (used, budget)
        return out


def _spent(budget: Budget, used: Usage) -> tuple[str, Any] | None:
    if budget.requests is not None and used.requests >= budget.requests:
        return "requests", f"{budget.requests:,} requests"
    if budget.tokens is not None and used.tokens >= budget.tokens:
        return "tokens", f"{budget.tokens:,} tokens"
    if budget.cost_usd is not None and used.cost_usd >= budget.cost_usd:
        dollars = f"{budget.cost_usd:,.6f}".rstrip("0").rstrip(".")
        return "cost_usd", f"${dollars}"
    return None


class BudgetBackend(BackendWrapper):
    """Checks the current tenant's budgets before a model call and charges it after.

    Without a tenant (:func:`current_tenant` is ``None``) or with no budget set, it only
    forwards the call. Attempts that failed after their calls came back (an unparseable
    answer, a rejected attempt before a retry or a fallback) and calls cut in flight (a
    deadline, a first-token timeout: their prompt, estimated) are charged their reported
    tokens and cost too, whether the call then succeeds or fails (:class:`_FailedAttempts`).

    Args:
        backend: The backend to guard (the whole reliable stack: a call is one charge).
        budgets: The budgets and their counters.
    """

    def __init__(self, backend: ModelBackend, budgets: TenantBudgets) -> None:
        super().__init__(backend)
        self.budgets = budgets

    async def predict(self, input: Any) -> ModelOutput:
        """Run the call if the tenant's budgets allow it; charge what it used."""
        tenant = _tenant.get()
        if tenant is None or not self.budgets.configured:
            return await self._backend.predict(input)
        await self.budgets.check(tenant)
        failed = _FailedAttempts()
        token = push_observer(failed)
        try:
            output = await self._backend.predict(input)
        except BaseException:
            self.budgets.charge(tenant, failed.billed)
            raise
        finally:
            pop_observer(token)
        usage = output.usage
        self.budgets.charge(
            tenant,
            failed.billed
            + Usage(
                requests=0,
                tokens=usage.total_tokens if usage is not None else 0,
                cost_usd=output.cost_usd or 0.0,
            ),
        )
        return output


class _FailedAttempts:
    """What one budgeted call's failed attempts were billed: one request plus the tokens and
    cost of every attempt reported with an ``outcome`` (its calls came back, then it failed)
    and of every call cut in flight (its prompt, estimated, as the envelope and metrics
    count it)."""

    __slots__ = ("billed",)

    def __init__(self) -> None:
        self.billed = Usage(requests=1)

    def on_step(self, timing: Any) -> None:
        """Not needed."""

    def on_model_output(self, output: ModelOutput) -> None:
        """Add a failed attempt's or a cut call's reported tokens and cost."""
        usage = output.usage
        failed = "outcome" in output.metadata or output.metadata.get("cut")
        if failed and usage is not None:
            self.billed = self.billed + Usage(0, usage.total_tokens, output.cost_usd or 0.0)

    def on_retry(self, model_id: str, attempt: int, error: BaseException, delay_s: float) -> None:
        """Not needed."""

    def on_fallback(self, from_model_id: str, to_model_id: str, error: BaseException) -> None:
        """Not needed."""

    def on_breaker_refusal(self, model_id: str, retry_after_s: float) -> None:
        """Not needed."""
