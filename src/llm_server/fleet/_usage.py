"""Tenants' usage shared by a fleet through Redis (a :class:`UsageCounters` that also holds
reservations for the whole fleet).

Admitting a call is one round trip (``BUDGET_RESERVE``: the fleet's totals plus what calls in
flight hold, checked and held at once); ending it is not: its charge and the release of what it
held are queued and written by the sync thread every 100 ms in one batch (``BUDGET_SETTLE``).
Each batch carries a number and Redis applies a number once, so a batch re-sent after a reply
that never arrived (a timeout after Redis applied it) is not charged twice. A batch that could
not be written (Redis down or slow) is kept and re-sent first; charges made meanwhile wait
behind it. Charges still unwritten when the process stops are logged with their totals.

Reading usage reads a local view: the fleet's totals as last read or written, plus this
process's charges not yet written. A tenant's period is read once on first sight, then re-read
every second while it is in use; the view keeps at most ``max_slots`` periods, and one unused
for ``idle_s`` is forgotten (read again on its next use).

Usage is only as durable as Redis: see :func:`check_persistence`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from redis.commands.core import AsyncScript

from llm_server.core.errors import ConfigurationError
from llm_server.core.reliability._budgets import PeriodLimit, Usage
from llm_server.fleet import _scripts
from llm_server.fleet._connection import FleetConnection, RedisFailure

__all__ = ["RedisUsageCounters", "check_persistence"]

_log = logging.getLogger("llm_server.fleet")

_FIELDS = ("requests", "tokens", "cost_usd")
_KEEP_S = 86_400  # a period's totals outlive it by a day, for the record
_KINDS = ("requests", "tokens", "cost_usd")

Slot = tuple[str, str]  # (tenant, period key)


def _usage(values: list[Any]) -> Usage:
    requests, tokens, cost = (v.decode() if isinstance(v, bytes) else v for v in values)
    return Usage(int(float(requests or 0)), int(float(tokens or 0)), float(cost or 0.0))


@dataclass(slots=True)
class _Entry:
    """What one tenant's period owes Redis: a charge, a release of held amounts."""

    charge: Usage
    release: Usage
    expires_at: float


@dataclass(frozen=True, slots=True)
class _Batch:
    number: int
    entries: dict[Slot, _Entry]


class RedisUsageCounters:
    """Usage in Redis, read from a local view; reservations held fleet-wide.

    Args:
        connection: The process's fleet connection.
        max_slots: The most tenant periods the local view keeps (the least recently used go).
        idle_s: A tenant period not used for this long is forgotten by the view.
    """

    def __init__(
        self, connection: FleetConnection, *, max_slots: int = 4096, idle_s: float = 600.0
    ) -> None:
        self._conn = connection
        self.max_slots = max_slots
        self.idle_s = idle_s
        self._known: OrderedDict[Slot, tuple[Usage, float]] = OrderedDict()  # totals, last use
        self._pending: dict[Slot, _Entry] = {}  # settled here, not in a batch yet
        self._batch: _Batch | None = None  # sent and not known written: re-sent as it is
        self._numbers = 0
        self._lock = threading.Lock()
        self._settle = connection.client.register_script(_scripts.BUDGET_SETTLE)
        self._reserve_scripts: dict[int, AsyncScript] = {}
        # loaded now, so that a call's first reservation is one EVALSHA, not two round trips
        # (Redis down: loaded by the first reservation once it answers)
        with contextlib.suppress(*RedisFailure):
            connection.client.script_load(_scripts.BUDGET_RESERVE)
        connection.on_sync(periodic=self.refresh, flush=self.flush, resync=self.refresh)

    def _key(self, tenant: str, period: str) -> str:
        return self._conn.key("budget", tenant, period)

    @property
    def slots(self) -> int:
        """Tenant periods the local view holds now."""
        return len(self._known)

    # --- reading ----------------------------------------------------------------------------

    async def usage(self, tenant: str, key: str) -> tuple[Usage, bool]:
        """The tenant's usage (fleet totals + unwritten charges) and whether it is shared."""
        slot = (tenant, key)
        conn = self._conn
        if slot not in self._known and conn.reliable():
            try:  # first sight of this tenant's period here: read it once
                values = await conn.async_client().hmget(self._key(tenant, key), _FIELDS)
            except RedisFailure as exc:
                conn.failed(exc)
            else:
                with self._lock:
                    if slot not in self._known:
                        self._remember(slot, _usage(values))
        with self._lock:
            entry = self._known.get(slot)
            if entry is not None:
                self._known[slot] = (entry[0], time.monotonic())
                self._known.move_to_end(slot)
            total = (entry[0] if entry else Usage()) + self._unwritten(slot)
        return total, entry is not None and not conn.fallback

    def _remember(self, slot: Slot, totals: Usage) -> None:
        self._known[slot] = (totals, time.monotonic())
        self._known.move_to_end(slot)
        while len(self._known) > self.max_slots:
            self._known.popitem(last=False)

    def _unwritten(self, slot: Slot) -> Usage:
        total = Usage()
        pending = self._pending.get(slot)
        if pending is not None:
            total = total + pending.charge
        if self._batch is not None and (sent := self._batch.entries.get(slot)) is not None:
            total = total + sent.charge
        return total

    # --- reserving and charging -------------------------------------------------------------

    async def reserve(
        self, tenant: str, periods: Sequence[PeriodLimit], amount: Usage, kinds: Sequence[str]
    ) -> tuple[int, str, bool] | Literal[True] | None:
        """Hold ``amount`` for this process in every period, if the fleet has room (one round
        trip); ``None`` when Redis cannot decide now (the caller decides locally)."""
        conn = self._conn
        if not conn.reliable():
            return None
        keys = [conn.key("members")]
        args: list[Any] = [conn.process_id, amount.requests, amount.tokens, repr(amount.cost_usd)]
        args += ["1" if kind in kinds else "0" for kind in _KINDS]
        for limit in periods:
            name = self._key(tenant, limit.key)
            keys += [name, f"{name}:held"]
            budget = limit.budget
            args += [
                "" if getattr(budget, kind) is None else getattr(budget, kind) for kind in _KINDS
            ]
            args.append(int(limit.ends) + _KEEP_S)
        client = conn.async_client()
        script = self._reserve_scripts.get(id(client))
        if script is None:
            script = self._reserve_scripts[id(client)] = client.register_script(
                _scripts.BUDGET_RESERVE
            )
        try:
            index, kind, spent = await script(keys=keys, args=args)
        except RedisFailure as exc:
            conn.failed(exc)
            # Redis may have held it before the reply was lost: release it with the next batch
            # (a release never goes below zero)
            with self._lock:
                for limit in periods:
                    self._add((tenant, limit.key), Usage(), amount, limit.ends)
            return None
        if int(index) == 0:
            return True
        what = kind.decode() if isinstance(kind, bytes) else str(kind)
        return int(index) - 1, what, bool(int(spent))

    def settle(
        self, tenant: str, periods: Sequence[PeriodLimit], usage: Usage, released: Usage
    ) -> None:
        """Queue a call's charge and the release of what it held (written within 100 ms)."""
        with self._lock:
            for limit in periods:
                self._add((tenant, limit.key), usage, released, limit.ends)

    def charge(self, tenant: str, key: str, usage: Usage, expires_at: float) -> None:
        """Add usage made outside a reservation (written by the sync thread)."""
        with self._lock:
            self._add((tenant, key), usage, Usage(), expires_at)

    def _add(self, slot: Slot, usage: Usage, released: Usage, expires_at: float) -> None:
        entry = self._pending.get(slot)
        if entry is None:
            self._pending[slot] = _Entry(usage, released, expires_at)
        else:
            entry.charge = entry.charge + usage
            entry.release = entry.release + released

    # --- the sync thread --------------------------------------------------------------------

    def flush(self) -> None:
        """Write the batch not yet known written (again, with its number), else a new one."""
        with self._lock:
            if self._batch is None:
                if not self._pending:
                    return
                self._numbers += 1
                self._batch = _Batch(self._numbers, self._pending)
                self._pending = {}
            batch = self._batch
        conn = self._conn
        keys = [conn.key("budget", "applied")]
        args: list[Any] = [conn.process_id, batch.number]
        for (tenant, key), entry in batch.entries.items():
            name = self._key(tenant, key)
            keys += [name, f"{name}:held"]
            charge, release = entry.charge, entry.release
            args += [charge.requests, charge.tokens, repr(charge.cost_usd)]
            args += [release.requests, release.tokens, repr(release.cost_usd)]
            args.append(int(entry.expires_at) + _KEEP_S)
        answers = self._settle(keys=keys, args=args)  # a failure keeps the batch, to re-send
        with self._lock:
            self._batch = None
            for index, slot in enumerate(batch.entries):
                if slot in self._known:
                    self._known[slot] = (
                        _usage(answers[3 * index : 3 * index + 3]),
                        self._known[slot][1],
                    )

    def refresh(self) -> None:
        """Re-read the totals of the periods in use; forget those idle or ended."""
        idle_before = time.monotonic() - self.idle_s
        with self._lock:
            for slot in [s for s, (_, used) in self._known.items() if used < idle_before]:
                del self._known[slot]
            slots = list(self._known)
        if not slots:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for tenant, key in slots:
            pipe.hmget(self._key(tenant, key), _FIELDS)
        answers = pipe.execute()
        with self._lock:
            for slot, values in zip(slots, answers, strict=True):
                if slot in self._known:
                    self._known[slot] = (_usage(values), self._known[slot][1])

    def unwritten(self) -> tuple[int, Usage]:
        """Tenant periods with charges not written yet, and the sum of those charges."""
        with self._lock:
            slots = set(self._pending) | set(self._batch.entries if self._batch else ())
            total = sum((self._unwritten(slot) for slot in slots), Usage())
        return len(slots), total

    def report_unwritten(self) -> None:
        """At shutdown: log charges that never reached Redis, with their totals."""
        count, total = self.unwritten()
        if count:
            _log.error(
                "fleet: %d tenant periods' charges were not written to Redis at %s before "
                "shutdown (or their last write was never confirmed) and are lost to the "
                "fleet's budgets: %d requests, %d tokens, $%.6f in all",
                count,
                self._conn.display_url,
                total.requests,
                total.tokens,
                total.cost_usd,
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def check_persistence(connection: FleetConnection, *, required: bool) -> bool:
    """Whether Redis keeps data across a restart (AOF or RDB snapshots), asked once at startup.

    Tenants' usage lives in Redis: without persistence a Redis restart resets every tenant's
    budgets to zero. Without it this logs an error naming the risk (and, with ``required``,
    refuses to start). An ACL user that may not run ``CONFIG GET`` gets ``INFO persistence``
    instead (which shows AOF only): then only AOF counts as persistence.

    Returns:
        Whether Redis persists data.

    Raises:
        ConfigurationError: ``required`` and Redis has neither AOF nor snapshots.
    """
    client = connection.client
    try:
        config = {**client.config_get("appendonly"), **client.config_get("save")}
        values = {_text(k): _text(v) for k, v in config.items()}
        persistent = values.get("appendonly") == "yes" or bool(values.get("save", "").strip())
    except RedisFailure:  # CONFIG may be refused to an ACL user: INFO tells about AOF only
        try:
            persistent = bool(int(client.info("persistence").get("aof_enabled", 0)))
        except RedisFailure as exc:
            persistent = False
            _log.warning(
                "fleet: could not ask Redis at %s whether it persists data (%s)",
                connection.display_url,
                type(exc).__name__,
            )
    if persistent:
        return True
    message = (
        f"Redis at {connection.display_url} has no persistence (appendonly no, no save "
        "points): a restart resets every tenant's budget usage to zero. Turn on AOF "
        "('appendonly yes') or RDB snapshots for budgets that survive a restart"
    )
    if required:
        raise ConfigurationError(f"LLM_SERVER_REDIS_PERSISTENCE_REQUIRED: {message}")
    _log.error("fleet: %s (LLM_SERVER_REDIS_PERSISTENCE_REQUIRED refuses to start)", message)
    return False
