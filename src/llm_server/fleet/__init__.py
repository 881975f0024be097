"""A fleet that acts as one: breakers, rate limits and budgets shared through Redis.

Set ``LLM_SERVER_REDIS_URL`` and every process of every replica shares each model's circuit
breaker and ``rate_limit:`` and each tenant's usage against its ``budgets:``; unset, each
process keeps its own (nothing here is imported).
Needs the ``fleet`` extra (``pip install "llm-server-framework[fleet]"``: redis-py)::

    request ──► tenant's budget (one Lua script: the call's reservation, fleet-wide)
            ──► breaker (local copy of the shared record: no round trip while closed)
            ──► shared cache (opt-in: a hit ends here)
            ──► budget (the model call's estimate), rate limit (requests, tokens): a script each
            ──► provider
                  │ failure, transition, probe lease and verdict:  ┐ the writer thread,
                  │   queued, written at once (never awaited)      ┘ woken by the call
                  │ success: summed, written every 100 ms     ┐
                  │ unused tokens: given back every 100 ms    ├ the sync thread
                  │ budget charges: numbered batches, 100 ms  │
    pub/sub on every transition + re-read every 1 s            ┘

While Redis is down or slow (each command times out after ``LLM_SERVER_REDIS_TIMEOUT_S``),
each process falls back to its own breakers and its share of every limit, logs one warning,
and shares again when Redis answers. ``READONLY`` after a failover drops the pooled
connections; ``LLM_SERVER_REDIS_URL=redis+sentinel://host:port,.../<service>`` follows the
primary that Redis Sentinel names. ``NOPERM``, ``WRONGTYPE`` and ``OOM`` are reported once,
naming the setting to fix, and keep the process on local state until fixed.

Its modules (private; the names are public here):

- ``_connection``: :class:`FleetConnection`: clients, timeouts, fallback, failover;
- ``_sync_threads``: its background sync and writer threads and the work registered for them;
- ``_batch``: one round trip of scripts (a pipeline of EVALSHA) and what may fail in it;
- ``_clients``: the Redis clients for a URL (Sentinel included) and what an error means;
- ``_breakers``: :class:`RedisBreakerStore`, a shared :class:`~llm_server.core.circuit_breaker.
  BreakerStateStore` that also decides fleet-wide (failures, probe leases, verdicts);
- ``_breaker_entries``: a shared breaker's keys, queued work and scripts' arguments;
- ``_limits``: :class:`RedisLimitCounters`, shared rate-limit counters (with leases);
- ``_usage``: :class:`RedisUsageCounters`, tenants' usage for their budgets;
- ``_cache``: :class:`SharedResponseCache`, a tenant-safe response cache per model;
- ``_scripts``: the Lua scripts (every time is Redis's own clock).
"""

from __future__ import annotations

from typing import Any

from llm_server.core.config import FrameworkSettings
from llm_server.fleet._breakers import RedisBreakerStore
from llm_server.fleet._cache import SharedResponseCache
from llm_server.fleet._connection import FleetConnection
from llm_server.fleet._limits import RedisLimitCounters
from llm_server.fleet._usage import RedisUsageCounters, check_persistence

__all__ = [
    "Fleet",
    "FleetConnection",
    "RedisBreakerStore",
    "RedisLimitCounters",
    "RedisUsageCounters",
    "SharedResponseCache",
    "check_persistence",
]


class Fleet:
    """The shared state of one process: a connection, its breaker store and limit counters.

    Args:
        connection: The Redis connection.
    """

    def __init__(self, connection: FleetConnection) -> None:
        self.connection = connection
        self.breakers = RedisBreakerStore(connection)
        self.limits = RedisLimitCounters(connection)
        self.usage = RedisUsageCounters(connection)

    @classmethod
    def from_settings(cls, settings: FrameworkSettings) -> Fleet | None:
        """The fleet ``settings`` ask for (``None`` without ``LLM_SERVER_REDIS_URL``).

        Checks the connection once: bad credentials (or, with ``LLM_SERVER_REDIS_REQUIRED``,
        an unreachable Redis) fail startup; an unreachable Redis otherwise starts the process
        on local state, with one warning. With ``LLM_SERVER_REDIS_PERSISTENCE_REQUIRED``, a
        Redis that keeps no data across a restart fails startup (:func:`check_persistence`).

        Raises:
            ConfigurationError: The URL is unusable, Redis refused the credentials, or
                (``LLM_SERVER_REDIS_PERSISTENCE_REQUIRED``) keeps no data across a restart.
        """
        if settings.redis_url is None:
            return None
        password = settings.redis_password
        connection = FleetConnection(
            settings.redis_url.get_secret_value(),
            password=password.get_secret_value() if password is not None else None,
            prefix=settings.redis_prefix,
            timeout_s=settings.redis_timeout_s,
        )
        connection.check(required=settings.redis_required)
        if settings.redis_persistence_required and not connection.fallback:
            check_persistence(connection, required=True)
        return cls(connection)

    def check_budget_durability(self) -> None:
        """With budgets configured: log an error when Redis keeps no data across a restart
        (their usage lives there; see :func:`check_persistence`)."""
        if not self.connection.fallback:
            check_persistence(self.connection, required=False)

    def start(self) -> None:
        """Start the background sync thread (after every breaker registered)."""
        self.connection.start()

    def close(self) -> None:
        """Stop the sync thread, write what is pending, close the connection, and log the
        charges that could not be written."""
        self.connection.close()
        self.usage.report_unwritten()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        await self.connection.aclose()

    def describe(self) -> dict[str, Any]:
        """The fleet's health (for ``/health`` and ``/models``), with the tenant periods whose
        budget charges are not yet written."""
        return {**self.connection.describe(), "charges_unwritten": self.usage.unwritten()[0]}
