"""A shared, tenant-safe response cache in Redis (opt-in per model: ``shared_cache:``).

DSPy's own cache key leaves out ``api_key``, ``api_base`` and ``base_url`` (DSPy PR #10006,
closed unmerged; LiteLLM's cache has the same gap, its issue #29955): a second tenant with
another endpoint and key would be served the first tenant's answer. This cache's key is the
request DSPy would send (without the key itself) *plus* the model id, the endpoint, a
fingerprint of the key and the current tenant, hashed with SHA-256. Values are JSON only
(DSPy's plain-data record of a native call), with a TTL and a size cap. A lookup is one
Redis round trip on the request path (the point of a cache: it replaces a provider call); a
store is queued and written by the sync thread. Redis down or slow: no cache, never an error.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Mapping
from typing import Any

from llm_server.core.errors import ConfigurationError
from llm_server.core.model_config import MAX_CACHE_TTL_S
from llm_server.core.reliability._budgets import current_tenant
from llm_server.fleet._connection import FleetConnection, RedisFailure

__all__ = ["SharedResponseCache"]

_NOT_THE_REQUEST = frozenset({"api_key", "api_base", "base_url"})  # in the key on our terms


class SharedResponseCache:
    """One model's shared cache.

    Args:
        connection: The process's fleet connection.
        model_id: The configured model id.
        api_base: The model's endpoint (``None``: the provider's default).
        api_key: The model's key (only a fingerprint of it enters the cache key).
        ttl_s: How long an answer is kept.
        max_entry_bytes: Answers larger than this are not cached.
    """

    def __init__(
        self,
        connection: FleetConnection,
        *,
        model_id: str,
        api_base: str | None,
        api_key: str | None,
        ttl_s: float,
        max_entry_bytes: int,
    ) -> None:
        self._conn = connection
        self.model_id = model_id
        self._scope = {
            "model_id": model_id,
            "api_base": api_base or "",
            "key": hashlib.sha256((api_key or "").encode()).hexdigest()[:32],
        }
        if not (math.isfinite(ttl_s) and 0 < ttl_s <= MAX_CACHE_TTL_S):
            raise ConfigurationError(
                f"shared cache of {model_id!r}: ttl_s must be a finite number of seconds "
                f"in (0, {MAX_CACHE_TTL_S:,}] (100 years) (got {ttl_s!r})"
            )
        self.ttl_ms = max(1, int(ttl_s * 1000))
        self.max_entry_bytes = max_entry_bytes
        self.hits = 0
        self.misses = 0
        self.skipped = 0
        """Answers not stored: too large, not plain JSON, or Redis unavailable."""
        self._pending: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        connection.on_sync(flush=self.flush)

    def key(self, request: Mapping[str, Any]) -> str:
        """The Redis key of a request, for the current tenant."""
        material = {
            **self._scope,
            "tenant": current_tenant(),
            "request": {k: v for k, v in request.items() if k not in _NOT_THE_REQUEST},
        }
        digest = hashlib.sha256(
            json.dumps(material, sort_keys=True, default=str, separators=(",", ":")).encode()
        ).hexdigest()
        return self._conn.key("cache", digest)

    async def get(self, key: str) -> dict[str, Any] | None:
        """The stored record, or ``None`` (a miss, or Redis unavailable)."""
        conn = self._conn
        if not conn.reliable():
            self.misses += 1
            return None
        try:
            raw = await conn.async_client().get(key)
        except RedisFailure as exc:
            conn.failed(exc)
            self.misses += 1
            return None
        if raw is None:
            self.misses += 1
            return None
        try:
            record = json.loads(raw)
        except ValueError:
            self.misses += 1
            return None
        if not isinstance(record, dict):
            self.misses += 1
            return None
        self.hits += 1
        return record

    def put(self, key: str, record: Any) -> None:
        """Queue a record to store (written within 100 ms; skipped when not plain JSON or too
        large)."""
        try:
            text = json.dumps(record, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):
            self.skipped += 1
            return
        if len(text.encode()) > self.max_entry_bytes or not self._conn.reliable():
            self.skipped += 1
            return
        with self._lock:
            self._pending.append((key, text))

    def flush(self) -> None:
        """Write the queued records (the sync thread, every 100 ms)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for key, text in pending:
            pipe.set(key, text, px=self.ttl_ms)
        pipe.execute()
