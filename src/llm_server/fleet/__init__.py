"""A fleet that acts as one: breakers, rate limits and budgets shared through Redis.

Set ``LLM_SERVER_REDIS_URL`` and every process of every replica shares each model's circuit
breaker and ``rate_limit:`` and each tenant's usage against its ``budgets:``; unset, each
process keeps its own (nothing here is imported).
Needs the ``fleet`` extra (``pip install "llm-server-framework[fleet]"``: redis-py)::

    request ──► breaker (local copy of the shared record: no round trip while closed)
            ──► rate limit (one Lua script: requests and tokens taken at once)
            ──► provider
                  │ failure: written at once, may trip the fleet
                  │ success: summed, written every 100 ms     ┐
                  │ unused tokens: given back every 100 ms    ├ the sync thread
    pub/sub on every transition + re-read every 1 s            ┘

While Redis is down or slow (each command times out after ``LLM_SERVER_REDIS_TIMEOUT_S``),
each process falls back to its own breakers and its share of every limit, logs one warning,
and shares again when Redis answers.

Its modules (private; the names are public here):

- ``_connection``: :class:`FleetConnection`: clients, timeouts, fallback, the sync thread;
- ``_breakers``: :class:`RedisBreakerStore`, a shared :class:`~llm_server.core.circuit_breaker.
  BreakerStateStore` that also decides fleet-wide (failures, probe leases, verdicts);
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
from llm_server.fleet._usage import RedisUsageCounters

__all__ = [
    "Fleet",
    "FleetConnection",
    "RedisBreakerStore",
    "RedisLimitCounters",
    "RedisUsageCounters",
    "SharedResponseCache",
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
        on local state, with one warning.

        Raises:
            ConfigurationError: The URL is unusable, or Redis refused the credentials.
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
        return cls(connection)

    def start(self) -> None:
        """Start the background sync thread (after every breaker registered)."""
        self.connection.start()

    def close(self) -> None:
        """Stop the sync thread and close the connection."""
        self.connection.close()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        await self.connection.aclose()

    def describe(self) -> dict[str, Any]:
        """The fleet's health (for ``/health`` and ``/models``)."""
        return self.connection.describe()
