"""Rate-limit counters shared by a fleet through Redis (a :class:`LimitCounters`).

Taking capacity is one round trip (one Lua script: both limits checked and taken at once, on
Redis's clock). Giving back what a call did not use is queued and written by the sync thread
every 100 ms, never on the request path. While Redis is down each process counts alone, with
its share of every limit (the limit divided by the processes seen alive).
"""

from __future__ import annotations

import threading
from collections import defaultdict

from redis.commands.core import AsyncScript

from llm_server.core.reliability._rate_limit import WINDOW_S, LocalLimitCounters
from llm_server.fleet import _scripts
from llm_server.fleet._connection import FleetConnection, RedisFailure

__all__ = ["RedisLimitCounters"]

_WINDOW_MS = int(WINDOW_S * 1000)


class RedisLimitCounters:
    """Counters in Redis, with a per-process fallback.

    Args:
        connection: The process's fleet connection.
    """

    def __init__(self, connection: FleetConnection) -> None:
        self._conn = connection
        self.local = LocalLimitCounters(share=lambda: connection.members)
        """The fallback counters (each process gets its share of every limit)."""
        self._pending: defaultdict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        self._lock = threading.Lock()
        self._sync_script = connection.client.register_script(_scripts.LIMIT_TAKE)
        self._async_scripts: dict[int, AsyncScript] = {}
        connection.on_sync(flush=self.flush)

    async def take(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """Take both costs from the fleet's counters (one round trip), else locally."""
        conn = self._conn
        if not conn.fallback:
            client = conn.async_client()
            script = self._async_scripts.get(id(client))
            if script is None:
                script = self._async_scripts[id(client)] = client.register_script(
                    _scripts.LIMIT_TAKE
                )
            try:
                wait_ms, window = await script(
                    keys=[conn.key("rl", key)],
                    args=[_WINDOW_MS, requests, tokens, caps[0], caps[1]],
                )
            except RedisFailure as exc:
                conn.degrade(exc)
            else:
                wait = -1.0 if int(wait_ms) < 0 else int(wait_ms) / 1000
                return wait, -int(window) - 1, True  # fleet windows are negative (see give_back)
        return await self.local.take(key, requests, tokens, caps)

    def give_back(self, key: str, window: int, requests: int, tokens: int) -> None:
        """Queue capacity to return (fleet windows) or return it locally."""
        if window >= 0:
            self.local.give_back(key, window, requests, tokens)
            return
        with self._lock:
            pending = self._pending[(key, -window - 1)]
            pending[0] += requests
            pending[1] += tokens

    def flush(self) -> None:
        """Write the queued give-backs (called by the sync thread every 100 ms)."""
        with self._lock:
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0])
        if not pending:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for (key, window), (requests, tokens) in pending.items():
            self._sync_script(
                keys=[self._conn.key("rl", key)],
                args=["give", window, requests, tokens, _WINDOW_MS],
                client=pipe,
            )
        pipe.execute()
