"""Spending and usage budgets per tenant: requests, tokens and cost per UTC day or month.

The host says who the caller is (:func:`tenant_scope`, :func:`set_tenant`, or the FastAPI
dependency :func:`llm_server.fastapi.tenant_header`); every model call made for that tenant is
admitted only while its budgets have room, and holds a reservation until it ends: one
request at the door (:class:`BudgetBackend`, the outermost layer of the model-call stack),
and before each model call its estimate (the prompt's tokens counted here plus
``max_tokens``, priced at the model's price). When the call ends the reservation is settled
to the usage and cost the provider reported (:meth:`TenantBudgets.settle`, the one place a
call is charged). So what a tenant spends exceeds a budget by at most one model call's
estimate (the last one admitted while there was room), as long as calls cost no more than
their estimate; with Redis (:mod:`llm_server.fleet`) the reservation is the fleet's.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import anyio.from_thread

from llm_server.core.errors import BudgetExceededError, ConfigurationError
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._budget_values import (
    ANY_TENANT,
    PERIODS,
    Budget,
    LocalUsageCounters,
    Period,
    PeriodLimit,
    SharedReservations,
    Usage,
    UsageCounters,
    _tenant,
    current_tenant,
    period_key,
    set_tenant,
    tenant_scope,
)
from llm_server.core.reliability._wrapper import BackendWrapper
from llm_server.core.telemetry._observation import pop_observer, push_observer

__all__ = [
    "ANY_TENANT",
    "Budget",
    "BudgetBackend",
    "LocalUsageCounters",
    "Period",
    "PeriodLimit",
    "Reservation",
    "SharedReservations",
    "TenantBudgets",
    "Usage",
    "UsageCounters",
    "current_tenant",
    "reserve_model_call",
    "reserve_model_call_from_thread",
    "set_tenant",
    "tenant_scope",
]


@dataclass(eq=False, slots=True)
class Reservation:
    """What one call holds against its tenant's budgets until it is settled.

    Made by :meth:`TenantBudgets.reserve`, grown before each model call of the call by
    :func:`reserve_model_call`, ended by :meth:`TenantBudgets.settle`.

    Attributes:
        owner: The budgets it was made by.
        tenant: The tenant.
        periods: The periods it holds against (those of the moment it was made).
        held: What it holds in this process's view.
        held_shared: Of that, what it holds in the fleet's store.
        model_calls: Model calls admitted (their estimates held).
        refused: Whether a model call was refused for lack of room.
        settled: Whether it was settled (settling twice does nothing).
    """

    owner: TenantBudgets
    tenant: str
    periods: tuple[PeriodLimit, ...]
    held: Usage = Usage()  # noqa: RUF009 -- frozen: one shared zero is safe
    held_shared: Usage = Usage()  # noqa: RUF009 -- frozen
    model_calls: int = 0
    refused: bool = False
    settled: bool = False

    @property
    def counts_tokens(self) -> bool:
        """Whether a budget it holds against limits tokens or cost (estimates are needed)."""
        return any(
            p.budget.tokens is not None or p.budget.cost_usd is not None for p in self.periods
        )


_reservation: ContextVar[Reservation | None] = ContextVar("llm_server_reservation", default=None)

_AT_THE_DOOR = ("requests", "tokens", "cost_usd")
_BEFORE_A_MODEL_CALL = ("tokens", "cost_usd")  # its request was reserved at the door


async def reserve_model_call(estimate: Callable[[], tuple[int, float]]) -> None:
    """Before a model call is sent: hold its estimate in the current call's reservation.

    Does nothing outside a budgeted call (no tenant, or no budget for it), and calls
    ``estimate`` only when a token or cost budget applies.

    Args:
        estimate: The most the model call may use: ``(tokens, cost in USD)``.

    Raises:
        BudgetExceededError: The tenant's token or cost budget has no room left.
    """
    reservation = _reservation.get()
    if reservation is None or reservation.settled or not reservation.counts_tokens:
        return
    tokens, cost_usd = estimate()
    try:
        await reservation.owner.reserve_more(reservation, Usage(0, tokens, cost_usd))
    except BudgetExceededError:
        reservation.refused = True
        raise
    reservation.model_calls += 1


def reserve_model_call_from_thread(estimate: Callable[[], tuple[int, float]]) -> None:
    """:func:`reserve_model_call` for a synchronous model call in a worker thread that runs a
    sync program (``anyio.to_thread``): the reservation is made on the event loop.

    Outside such a thread (an optimizer's own thread) there is no loop to reserve on, and only
    the call's request, held at the door, counts.

    Raises:
        BudgetExceededError: The tenant's token or cost budget has no room left.
    """
    reservation = _reservation.get()
    if reservation is None or reservation.settled or not reservation.counts_tokens:
        return
    tokens, cost_usd = estimate()
    amount = Usage(0, tokens, cost_usd)
    try:
        anyio.from_thread.run(reservation.owner.reserve_more, reservation, amount)
    except BudgetExceededError:
        reservation.refused = True
        raise
    except RuntimeError:  # not an anyio worker thread (anyio's NoEventLoopError and older)
        return
    reservation.model_calls += 1


class TenantBudgets:
    """Budgets per tenant and period, and what each tenant used and holds.

    A call is admitted while its tenant's usage plus what calls in flight hold is below every
    budget (at the limit it is refused); it then holds one request, and before each model call
    that model call's estimate, until :meth:`settle` charges what it really used.

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
        self._shared = self.counters if isinstance(self.counters, SharedReservations) else None
        self._now = wall_clock
        self._held: dict[tuple[str, str], Usage] = {}  # reserved by calls in flight here
        self._lock = threading.Lock()
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

    def held(self, tenant: str, key: str) -> Usage:
        """What calls in flight in this process hold in the tenant's period ``key``."""
        return self._held.get((tenant, key), Usage())

    async def check(self, tenant: str) -> None:
        """Refuse a call the tenant's budgets have no room for (reserves nothing).

        Raises:
            BudgetExceededError: A budget of the current period is spent.
        """
        now = self._now()
        for period, budget in self.budgets_for(tenant).items():
            key, ends = period_key(period, now)
            used, fleet = await self.counters.usage(tenant, key)
            spent = _spent(budget, used + self.held(tenant, key), _AT_THE_DOOR)
            if spent is not None:
                raise self._refusal(tenant, period, ends, now, spent, fleet=fleet)

    async def reserve(self, tenant: str) -> Reservation | None:
        """Admit one call of ``tenant`` and hold one request for it until :meth:`settle`.

        Returns:
            The call's reservation, or ``None`` when the tenant has no budget.

        Raises:
            BudgetExceededError: A budget of the current period has no room left.
        """
        now = self._now()
        periods = tuple(
            PeriodLimit(*period_key(period, now), budget)
            for period, budget in self.budgets_for(tenant).items()
        )
        if not periods:
            return None
        reservation = Reservation(self, tenant, periods)
        await self._take(reservation, Usage(requests=1), _AT_THE_DOOR)
        return reservation

    async def reserve_more(self, reservation: Reservation, amount: Usage) -> None:
        """Hold ``amount`` more (a model call's estimate) if the token and cost budgets still
        have room.

        Raises:
            BudgetExceededError: The token or cost budget has no room left.
        """
        await self._take(reservation, amount, _BEFORE_A_MODEL_CALL)

    async def _take(self, reservation: Reservation, amount: Usage, kinds: Sequence[str]) -> None:
        tenant, periods = reservation.tenant, reservation.periods
        shared_verdict: tuple[int, str, bool] | Literal[True] | None = None
        if self._shared is not None:
            shared_verdict = await self._shared.reserve(tenant, periods, amount, kinds)
            if isinstance(shared_verdict, tuple):
                index, what, spent_alone = shared_verdict
                self._refuse(reservation, periods[index], what, fleet=True, held=not spent_alone)
        seen = [await self.counters.usage(tenant, p.key) for p in periods]
        with self._lock:  # no await from here on: the check and the hold are one step
            if shared_verdict is None:
                for limit, (used, fleet) in zip(periods, seen, strict=True):
                    committed = used + self._held.get((tenant, limit.key), Usage())
                    spent = _spent(limit.budget, committed, kinds)
                    if spent is not None:
                        held = _spent(limit.budget, used, kinds) is None
                        self._refuse(reservation, limit, spent[0], fleet=fleet, held=held)
            for limit in periods:
                slot = (tenant, limit.key)
                self._held[slot] = self._held.get(slot, Usage()) + amount
        reservation.held = reservation.held + amount
        if shared_verdict is True:
            reservation.held_shared = reservation.held_shared + amount

    def settle(self, reservation: Reservation, usage: Usage) -> None:
        """End a call: release what it held and charge what it used, once.

        The one place a call is charged: its usage is what the provider reported, for a
        failed call too when it is known.
        """
        if reservation.settled:
            return
        reservation.settled = True
        tenant = reservation.tenant
        with self._lock:
            for limit in reservation.periods:
                slot = (tenant, limit.key)
                left = self._held.get(slot, Usage()) - reservation.held
                if left.requests <= 0 and left.tokens <= 0 and left.cost_usd <= 1e-12:
                    self._held.pop(slot, None)
                else:
                    self._held[slot] = left
        if self._shared is not None:
            self._shared.settle(tenant, reservation.periods, usage, reservation.held_shared)
            return
        for limit in reservation.periods:
            self.counters.charge(tenant, limit.key, usage, limit.ends)

    def charge(self, tenant: str, usage: Usage) -> None:
        """Charge usage made outside a reservation to every period the tenant has a budget for."""
        now = self._now()
        for period in self.budgets_for(tenant):
            key, ends = period_key(period, now)
            self.counters.charge(tenant, key, usage, ends)

    def _refuse(
        self,
        reservation: Reservation,
        limit: PeriodLimit,
        what: str,
        *,
        fleet: bool,
        held: bool,
    ) -> NoReturn:
        """Raise the refusal; ``held``: the rest of the budget is held by calls in flight (it
        may come back when they end: retry in a second, not at the period's end)."""
        period: Period = "day" if limit.key.startswith("d") else "month"
        raise self._refusal(
            reservation.tenant,
            period,
            limit.ends,
            self._now(),
            _describe(limit.budget, what),
            fleet=fleet,
            held=held,
        )

    def _refusal(
        self,
        tenant: str,
        period: Period,
        ends: float,
        now: float,
        spent: tuple[str, str],
        *,
        fleet: bool,
        held: bool = False,
    ) -> BudgetExceededError:
        if fleet:
            self.refused_fleet += 1
        else:
            self.refused_local += 1
        what, limit = spent
        scope = "the fleet's" if fleet else "this process's"
        renews = f"{dt.datetime.fromtimestamp(ends, tz=dt.UTC):%Y-%m-%d %H:%M} UTC"
        if held:
            return BudgetExceededError(
                f"tenant {tenant!r} has no room left in its {what} budget for this {period} "
                f"({limit} per {period}, by {scope} count): calls in flight hold the rest, "
                "and what they do not use comes back when they end",
                tenant=tenant,
                limit=f"{what}_per_{period}",
                retry_after_s=1.0,
                fleet=fleet,
            )
        return BudgetExceededError(
            f"tenant {tenant!r} spent its {what} budget for this {period} "
            f"({limit} per {period}, by {scope} count); it renews at {renews}",
            tenant=tenant,
            limit=f"{what}_per_{period}",
            retry_after_s=max(1.0, ends - now),
            fleet=fleet,
        )

    async def usage(self, tenant: str) -> dict[Period, tuple[Usage, Budget]]:
        """The tenant's usage and budget in each budgeted period, as known here."""
        now = self._now()
        out: dict[Period, tuple[Usage, Budget]] = {}
        for period, budget in self.budgets_for(tenant).items():
            used, _ = await self.counters.usage(tenant, period_key(period, now)[0])
            out[period] = (used, budget)
        return out


def _describe(budget: Budget, what: str) -> tuple[str, str]:
    if what == "requests":
        return what, f"{budget.requests:,} requests"
    if what == "tokens":
        return what, f"{budget.tokens:,} tokens"
    dollars = f"{budget.cost_usd or 0:,.6f}".rstrip("0").rstrip(".")
    return what, f"${dollars}"


def _spent(budget: Budget, used: Usage, kinds: Sequence[str]) -> tuple[str, str] | None:
    """The first budget of ``kinds`` that ``used`` reached (at the limit counts), if any."""
    for what in kinds:
        limit = getattr(budget, what)
        if limit is not None and getattr(used, what) >= limit:
            return _describe(budget, what)
    return None


class BudgetBackend(BackendWrapper):
    """Admits a call only while the current tenant's budgets have room, and settles it after.

    Without a tenant (:func:`current_tenant` is ``None``) or with no budget set, it only
    forwards the call. The call holds one request from admission, and each model call it
    makes holds its estimate (see :func:`reserve_model_call`) until the call ends; it is then
    charged what it used: its reported tokens and cost, including those of attempts that
    failed after their calls came back (an unparseable answer, a rejected attempt before a
    retry or a fallback) and of calls cut in flight (a deadline, a first-token timeout: their
    prompt, estimated), whether the call then succeeds or fails (:class:`_FailedAttempts`).
    A call refused before any model call was sent is charged nothing.

    Args:
        backend: The backend to guard (the whole reliable stack: a call is one charge).
        budgets: The budgets and their counters.
    """

    def __init__(self, backend: ModelBackend, budgets: TenantBudgets) -> None:
        super().__init__(backend)
        self.budgets = budgets

    def predict(self, input: Any) -> Coroutine[Any, Any, ModelOutput]:
        """Run the call if the tenant's budgets allow it; charge what it used.

        Without a tenant or a budget this returns the inner backend's call itself: no
        coroutine frame of its own to resume on every network wait of every request.
        """
        tenant = _tenant.get()
        if tenant is None or not self.budgets.configured:
            return self._backend.predict(input)
        return self._budgeted(input, tenant)

    async def _budgeted(self, input: Any, tenant: str) -> ModelOutput:
        reservation = await self.budgets.reserve(tenant)
        if reservation is None:
            return await self._backend.predict(input)
        failed = _FailedAttempts()
        token = _reservation.set(reservation)
        observer = push_observer(failed)
        try:
            output = await self._backend.predict(input)
        except BaseException:
            refused_before_sending = reservation.refused and reservation.model_calls == 0
            self.budgets.settle(reservation, Usage() if refused_before_sending else failed.billed)
            raise
        finally:
            pop_observer(observer)
            _reservation.reset(token)
        usage = output.usage
        self.budgets.settle(
            reservation,
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
