"""What a budget is made of (private; public names at :mod:`llm_server.core.budgets`): the
tenant a call is made for, a budget's limits, usage, the period a limit counts over, and the
counters usage is kept in (this process's, or the fleet's through the same protocols).
"""

from __future__ import annotations

import calendar
import datetime as dt
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "ANY_TENANT",
    "PERIODS",
    "Budget",
    "LocalUsageCounters",
    "Period",
    "PeriodLimit",
    "SharedReservations",
    "Usage",
    "UsageCounters",
    "current_tenant",
    "period_key",
    "set_tenant",
    "tenant_scope",
]

Period = Literal["day", "month"]
"""The period a budget limit counts over: a UTC calendar day or month."""
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

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.requests - other.requests,
            self.tokens - other.tokens,
            self.cost_usd - other.cost_usd,
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


@dataclass(frozen=True, slots=True)
class PeriodLimit:
    """One period a reservation holds against: its key, when it ends, and its budget."""

    key: str
    ends: float
    budget: Budget


@runtime_checkable
class SharedReservations(Protocol):
    """Counters that also hold reservations for the whole fleet (Redis's do)."""

    async def reserve(
        self,
        tenant: str,
        periods: Sequence[PeriodLimit],
        amount: Usage,
        kinds: Sequence[str],
    ) -> tuple[int, str, bool] | Literal[True] | None:
        """Reserve ``amount`` in every period if the fleet's usage plus its reservations
        leave room in each checked kind: ``True`` (reserved), ``(period index, kind, spent)``
        (no room, nothing reserved; ``spent``: usage alone reached the limit, not only what
        calls in flight hold), or ``None`` (the store cannot decide now: decide locally)."""
        ...

    def settle(
        self, tenant: str, periods: Sequence[PeriodLimit], usage: Usage, released: Usage
    ) -> None:
        """Charge ``usage`` and release ``released`` (what :meth:`reserve` reserved) in every
        period, in one write (never waits)."""
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
