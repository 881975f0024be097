"""Tenants' usage shared by a fleet through Redis (a :class:`UsageCounters`).

Checking a budget reads a local view: the fleet's totals as last read or written, plus this
process's charges not yet written. The first call of a tenant's period in a process reads its
totals once (one round trip); after that the sync thread re-reads them every second and
writes the charges every 100 ms (``HINCRBY``/``HINCRBYFLOAT``, whose answers are the new
totals). A charge that could not be written (Redis down) is kept and written when Redis
answers again: usage is never lost, only late.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from llm_server.core.reliability._budgets import Usage
from llm_server.fleet._connection import FleetConnection, RedisFailure

__all__ = ["RedisUsageCounters"]

_FIELDS = ("requests", "tokens", "cost_usd")
_KEEP_S = 86_400  # a period's totals outlive it by a day, for the record


def _usage(values: list[Any]) -> Usage:
    requests, tokens, cost = (v.decode() if isinstance(v, bytes) else v for v in values)
    return Usage(int(requests or 0), int(tokens or 0), float(cost or 0.0))


class RedisUsageCounters:
    """Usage in Redis, read from a local view.

    Args:
        connection: The process's fleet connection.
    """

    def __init__(self, connection: FleetConnection) -> None:
        self._conn = connection
        self._known: dict[tuple[str, str], Usage] = {}  # the fleet's totals, last seen
        self._pending: dict[tuple[str, str], Usage] = {}  # charged here, not yet written
        self._expires: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        connection.on_sync(periodic=self.refresh, flush=self.flush, resync=self.refresh)

    def _key(self, tenant: str, period: str) -> str:
        return self._conn.key("budget", tenant, period)

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
                    self._known.setdefault(slot, _usage(values))
        with self._lock:
            known = self._known.get(slot)
            total = (known or Usage()) + self._pending.get(slot, Usage())
        return total, known is not None and not conn.fallback

    def charge(self, tenant: str, key: str, usage: Usage, expires_at: float) -> None:
        """Add a call's usage (written by the sync thread)."""
        slot = (tenant, key)
        with self._lock:
            self._pending[slot] = self._pending.get(slot, Usage()) + usage
            self._expires[slot] = expires_at

    def flush(self) -> None:
        """Write the charges; the answers are the fleet's new totals."""
        with self._lock:
            pending, self._pending = self._pending, {}
            expires = dict(self._expires)
        if not pending:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for (tenant, key), usage in pending.items():
            name = self._key(tenant, key)
            pipe.hincrby(name, "requests", usage.requests)
            pipe.hincrby(name, "tokens", usage.tokens)
            pipe.hincrbyfloat(name, "cost_usd", usage.cost_usd)
            pipe.expireat(name, int(expires[(tenant, key)]) + _KEEP_S)
        try:
            answers = pipe.execute()
        except RedisFailure:
            with self._lock:  # kept, to be written when Redis answers again
                for slot, usage in pending.items():
                    self._pending[slot] = usage + self._pending.get(slot, Usage())
            raise
        with self._lock:
            for index, slot in enumerate(pending):
                requests, tokens, cost, _ = answers[4 * index : 4 * index + 4]
                self._known[slot] = Usage(int(requests), int(tokens), float(cost))

    def refresh(self) -> None:
        """Re-read the totals of every period seen here; forget periods that ended."""
        now = time.time()
        with self._lock:
            for slot in [s for s, end in self._expires.items() if end <= now]:
                self._known.pop(slot, None)
                if slot not in self._pending:
                    del self._expires[slot]
            slots = list(self._known)
        if not slots:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for tenant, key in slots:
            pipe.hmget(self._key(tenant, key), _FIELDS)
        answers = pipe.execute()
        with self._lock:
            for slot, values in zip(slots, answers, strict=True):
                self._known[slot] = _usage(values)
