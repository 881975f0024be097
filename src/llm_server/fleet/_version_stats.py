"""Program versions' live figures shared by a fleet through Redis, and the guard's lock.

Each (program, scope, version) is one hash, ``<prefix>:vstats:<program>:<scope>:<version>``,
with the fields ``requests``, ``parse_failures``, ``tokens``, ``priced``, ``cost_usd``,
``e:<error type>`` and ``l:<latency bucket>``. The fleet's sync thread writes each process's
new counts every 100 ms (one script per version, in the same round trip as the other parts'
writes; nothing on the request path). Once a second those scripts answer the fleet's new
totals and the versions not written are re-read, in the same round trip; in between, what
this process wrote is added to the totals it knows (its own counts never go missing from
:meth:`~llm_server.programs._version_stats.VersionStats.figures`, other processes' show within
a second). Counts that could not be written (Redis down) are kept and written later.

:class:`FleetLock` is a lease (``SET NX PX``, renewed by its holder) that makes one process of
the fleet the canary guard's decider.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from llm_server.fleet._connection import (
    SYNC_INTERVAL_S,
    FleetConnection,
    RedisFailure,
    ScriptBatch,
)
from llm_server.programs._version_stats import LATENCY_BOUNDS_MS, VersionFigures, VersionStats

__all__ = ["FleetLock", "RedisVersionStats"]

_KEEP_S = 7 * 86_400
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""
# KEYS[1] a version's hash; ARGV: seconds to keep it, the cost to add, '1' to answer the
# hash's new totals (HGETALL; else 0), then (field, count) pairs
_ADD = """
local key = KEYS[1]
for i = 4, #ARGV, 2 do
    redis.call('HINCRBY', key, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBYFLOAT', key, 'cost_usd', ARGV[2])
redis.call('EXPIRE', key, ARGV[1])
if ARGV[3] == '1' then
    return redis.call('HGETALL', key)
end
return 0
"""
# KEYS: versions' hashes; answers each one's HGETALL
_READ = """
local out = {}
for i, key in ipairs(KEYS) do
    out[i] = redis.call('HGETALL', key)
end
return out
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _figures(fields: dict[Any, Any] | list[Any]) -> VersionFigures:
    """Figures from HGETALL's answer: a dict, or the flat list a script answers."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2], strict=True))
    values = {_text(k): _text(v) for k, v in fields.items()}
    buckets = [0] * (len(LATENCY_BOUNDS_MS) + 1)
    errors: dict[str, int] = {}
    for name, value in values.items():
        if name.startswith("l:"):
            index = int(name[2:])
            if 0 <= index < len(buckets):
                buckets[index] = int(value)
        elif name.startswith("e:"):
            errors[name[2:]] = int(value)
    return VersionFigures(
        requests=int(values.get("requests", 0)),
        errors=errors,
        parse_failures=int(values.get("parse_failures", 0)),
        latency_buckets=tuple(buckets),
        tokens=int(values.get("tokens", 0)),
        cost_usd=float(values.get("cost_usd", 0.0)),
        priced=int(values.get("priced", 0)),
    )


class RedisVersionStats:
    """Writes a process's :class:`VersionStats` counts to Redis and reads the fleet's totals.

    Args:
        connection: The process's fleet connection.
        stats: The program manager's figures.
    """

    def __init__(self, connection: FleetConnection, stats: VersionStats) -> None:
        self._conn = connection
        self._stats = stats
        stats.attach(lambda: not connection.fallback)
        self._add = connection.client.register_script(_ADD)
        self._read = connection.client.register_script(_READ)
        self._next_read = 0.0  # when the sync thread's batch next asks for the totals
        connection.on_sync(stage=self.stage, resync=self.refresh)

    def _key(self, program_id: str, scope: str, version: str) -> str:
        return self._conn.key("vstats", program_id, scope or "-", version)

    def flush(self) -> None:
        """Write the new counts now, one round trip (the sync thread writes them every 100 ms
        in its batch, with the other parts' writes)."""
        self._conn.run_stages([self.stage])

    def stage(self, batch: ScriptBatch) -> Callable[[list[Any] | None], None] | None:
        """Add the new counts to the sync thread's batch: one script per version; once a
        second these answer the fleet's new totals, and the versions not written are
        re-read (one script for all)."""
        pending = self._stats.take_pending()
        now = time.monotonic()
        answer = now >= self._next_read
        unwritten: list[tuple[str, str, str]] = []
        if answer:
            self._next_read = now + SYNC_INTERVAL_S
            known = self._stats.keys()
            unwritten = [key for key in known if key not in pending]
        if not (pending or unwritten):
            return None
        for (program_id, scope, version), figures in pending.items():
            args: list[Any] = [_KEEP_S, repr(figures.cost_usd), "1" if answer else "0"]
            args += ["requests", figures.requests, "parse_failures", figures.parse_failures]
            args += ["tokens", figures.tokens, "priced", figures.priced]
            for error, count in figures.errors.items():
                args += [f"e:{error}", count]
            for index, count in enumerate(figures.latency_buckets):
                if count:
                    args += [f"l:{index}", count]
            batch.add(self._add, [self._key(program_id, scope, version)], args)
        if unwritten:
            batch.add(self._read, [self._key(*key) for key in unwritten], [])

        def settle(replies: list[Any] | None) -> None:
            if replies is None:
                self._stats.give_back(pending)  # written when Redis answers again
                if answer:
                    self._next_read = 0.0  # and read on the next turn
                return
            written = replies[: len(pending)]
            for (key, figures), fields in zip(pending.items(), written, strict=True):
                if answer:
                    self._stats.set_fleet(key, _figures(fields))
                else:  # the totals known + what this process just wrote
                    self._stats.add_fleet(key, figures)
            if unwritten:
                for key, fields in zip(unwritten, replies[-1], strict=True):
                    self._stats.set_fleet(key, _figures(fields or []))

        return settle

    def refresh(self, keys: list[tuple[str, str, str]] | None = None) -> None:
        """Re-read the fleet's totals now, one round trip (after a fallback; the sync
        thread's batch reads them every second)."""
        wanted = self._stats.keys() if keys is None else keys
        if not wanted:
            return
        pipe = self._conn.client.pipeline(transaction=False)
        for program_id, scope, version in wanted:
            pipe.hgetall(self._key(program_id, scope, version))
        answers = pipe.execute()
        for key, fields in zip(wanted, answers, strict=True):
            self._stats.set_fleet(key, _figures(fields or {}))


class FleetLock:
    """A lease one process of the fleet holds at a time (``SET NX PX``, renewed by its holder).

    Args:
        connection: The process's fleet connection.
        name: The lock's name (under the fleet's prefix).
        ttl_s: How long the lease lasts unless renewed (a dead holder's lapses after it).
    """

    def __init__(self, connection: FleetConnection, name: str, *, ttl_s: float = 5.0) -> None:
        self._conn = connection
        self._key = connection.key("lock", name)
        self._ttl_ms = int(ttl_s * 1000)
        self._renew = connection.client.register_script(_RENEW)

    def acquire(self) -> bool:
        """Take or renew the lease; whether this process holds it (``False`` if Redis fails)."""
        try:
            return bool(self._renew(keys=[self._key], args=[self._conn.process_id, self._ttl_ms]))
        except RedisFailure:
            return False
