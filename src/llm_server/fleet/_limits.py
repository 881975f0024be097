"""Rate-limit counters shared by a fleet through Redis (a :class:`LimitCounters`).

Taking capacity is at most one round trip (one Lua script: both limits checked and taken at
once, on Redis's clock), and usually none: a process takes a small *lease* of capacity (enough
for several calls: at most 1/20 of the limit divided by the processes alive, at most 50 calls)
and serves the next calls from it, for at most a second and never past the window it was taken
in. What a lease or a call did not use is given back by the sync thread every 100 ms, never on
the request path. Calls of one event loop that find the lease spent while another call of
theirs is already asking Redis for the next one wait for its answer instead of asking too (at
c=64 they were a dozen takes per lease). While Redis is down each process counts alone, with
its share of every limit (the limit divided by the processes seen alive). A take that times out
(Redis slow, or only this event loop late to read the answer, after Redis counted it) decides
that one call locally; the next call asks Redis again: deciding alone for longer would let
every process spend its share on top of what the fleet already counted.

Capacity cannot leak: every take carries a *grant id*. A taker that got its answer claims the
grant (batched, by the sync thread); one that gave up (a timeout, a cancelled request)
releases it, which returns the capacity, or, when the take has not reached Redis yet, makes
Redis refuse it when it does. A grant nobody claimed (its process died waiting) is returned by
any process's sync thread once its claim time (10 s) passed. Counters never go below zero.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from redis.commands.core import AsyncScript

from llm_server.core.reliability._rate_limit import WINDOW_S, LocalLimitCounters
from llm_server.fleet import _scripts
from llm_server.fleet._connection import (
    SYNC_INTERVAL_S,
    FleetConnection,
    RedisFailure,
    ScriptBatch,
)

__all__ = ["LEASE_CALLS_MAX", "LEASE_S", "RedisLimitCounters"]

_WINDOW_MS = int(WINDOW_S * 1000)
LEASE_S = 1.0
"""The longest a process serves calls from capacity it took ahead."""
LEASE_CALLS_MAX = 50
"""The most calls one lease covers."""
_LEASE_SHARE = 20  # a lease is at most 1/20 of a process's share of the limit
CLAIM_MS = 10_000
"""How long Redis keeps a grant for its taker to claim before returning it."""


@dataclass(slots=True)
class _Lease:
    window: int  # Redis's window index
    requests: int
    tokens: int
    until: float  # local monotonic time


@dataclass(slots=True)
class _Asking:
    done: asyncio.Event  # set when the take in flight ended
    leased: bool = False  # whether it left a lease the waiters can take from


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
        self._leases: dict[str, _Lease] = {}
        self._lock = threading.Lock()
        self._sync_script = connection.client.register_script(_scripts.LIMIT_TAKE)
        self._async_scripts: dict[int, tuple[Any, AsyncScript]] = {}
        self._grant_ids = itertools.count()
        self._claims: defaultdict[str, list[str]] = defaultdict(list)
        self._releases: defaultdict[str, list[str]] = defaultdict(list)
        self._keys: set[str] = set()  # limiters this process used (their grants are reaped)
        self.round_trips = 0
        """Takes that went to Redis (the others were served from a lease)."""
        self.released = 0
        """Takes this process gave up on (timed out or cancelled) and released."""
        self._asking: dict[tuple[int, str], _Asking] = {}  # (loop, key): its take in flight
        self._next_reap = 0.0
        connection.on_sync(stage=self.stage)

    def _keys_of(self, key: str) -> list[str]:
        base = self._conn.key("rl", key)
        return [base, f"{base}:g", f"{base}:gd"]

    def _grant(self, key: str) -> str:
        self._keys.add(key)
        return f"{self._conn.process_id}:{next(self._grant_ids)}"

    def _release(self, key: str, grant: str) -> None:
        with self._lock:
            self._releases[key].append(grant)
            self.released += 1

    async def take(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """Take both costs from a lease, else from the fleet's counters, else locally."""
        conn = self._conn
        if conn.fallback:
            return await self.local.take(key, requests, tokens, caps)
        leased = self._from_lease(key, requests, tokens)
        if leased is not None:
            return leased
        calls = self._lease_calls(caps, tokens)
        if calls == 1:  # no lease to wait for: every call asks
            return await self._take(key, requests, tokens, caps, calls)
        return await self._take_or_wait(key, requests, tokens, caps, calls)

    async def _take_or_wait(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int], calls: int
    ) -> tuple[float, int, bool]:
        """One take per key and event loop at a time: the others wait for its lease."""
        conn = self._conn
        asking = (id(asyncio.get_running_loop()), key)
        while (waiting := self._asking.get(asking)) is not None:
            await waiting.done.wait()
            if conn.fallback:
                return await self.local.take(key, requests, tokens, caps)
            leased = self._from_lease(key, requests, tokens)
            if leased is not None:
                return leased
            if not waiting.leased:  # refused, timed out or cancelled: each asks, as it would
                return await self._take(key, requests, tokens, caps, calls)
        waiting = self._asking[asking] = _Asking(asyncio.Event())
        try:
            return await self._take(key, requests, tokens, caps, calls)
        finally:
            with self._lock:
                waiting.leased = key in self._leases
            del self._asking[asking]
            waiting.done.set()

    async def _take(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int], calls: int
    ) -> tuple[float, int, bool]:
        conn = self._conn
        client = conn.async_client()
        # keyed by the client's id, checked by identity: a client made after another was
        # closed (another event loop, or after READONLY) may reuse its id
        entry = self._async_scripts.get(id(client))
        if entry is None or entry[0] is not client:
            entry = self._async_scripts[id(client)] = (
                client,
                client.register_script(_scripts.LIMIT_TAKE),
            )
        script = entry[1]
        grant = self._grant(key)
        args: list[int | str] = [_WINDOW_MS, requests, tokens, caps[0], caps[1]]
        args += [requests * calls, tokens * calls, grant, CLAIM_MS]
        now = time.monotonic()
        try:
            reply = await script(keys=self._keys_of(key), args=args)
        except RedisFailure as exc:
            self._release(key, grant)  # Redis may have counted it: give it back
            conn.failed(exc)
            return await self.local.take(key, requests, tokens, caps)
        except BaseException:  # cancelled while Redis answered: the same
            self._release(key, grant)
            raise
        return self._taken(key, requests, tokens, reply, now, grant=grant)

    def take_sync(
        self, key: str, requests: int, tokens: int, caps: tuple[int, int]
    ) -> tuple[float, int, bool]:
        """:meth:`take` for a synchronous caller (the synchronous client)."""
        conn = self._conn
        if conn.fallback:
            return self.local.take_sync(key, requests, tokens, caps)
        leased = self._from_lease(key, requests, tokens)
        if leased is not None:
            return leased
        calls = self._lease_calls(caps, tokens)
        grant = self._grant(key)
        args: list[int | str] = [_WINDOW_MS, requests, tokens, caps[0], caps[1]]
        args += [requests * calls, tokens * calls, grant, CLAIM_MS]
        now = time.monotonic()
        try:
            reply = self._sync_script(keys=self._keys_of(key), args=args)
        except RedisFailure as exc:
            self._release(key, grant)
            conn.failed(exc)
            return self.local.take_sync(key, requests, tokens, caps)
        return self._taken(key, requests, tokens, reply, now, grant=grant)

    def _from_lease(self, key: str, requests: int, tokens: int) -> tuple[float, int, bool] | None:
        now = time.monotonic()
        with self._lock:
            lease = self._leases.get(key)
            fits = lease is not None and lease.requests >= requests and lease.tokens >= tokens
            if lease is not None and fits and now < lease.until:
                lease.requests -= requests
                lease.tokens -= tokens
                return 0.0, -lease.window - 1, True
            if lease is not None:  # spent, short or expired: what is left goes back
                del self._leases[key]
                self._queue(key, lease.window, lease.requests, lease.tokens)
        return None

    def _taken(
        self, key: str, requests: int, tokens: int, reply: Any, now: float, *, grant: str
    ) -> tuple[float, int, bool]:
        self.round_trips += 1
        wait_ms, window, elapsed_ms, got_requests, got_tokens = (int(x) for x in reply)
        if wait_ms == -2:  # this grant was released before its take arrived: ask again soon
            return 0.05, -window - 1, True
        if wait_ms != 0:
            return (-1.0 if wait_ms == -1 else wait_ms / 1000), -window - 1, True
        with self._lock:
            self._claims[key].append(grant)
        if got_requests > requests or got_tokens > tokens:
            until = now + min(LEASE_S, (_WINDOW_MS - elapsed_ms) / 1000)
            spare = _Lease(window, got_requests - requests, got_tokens - tokens, until)
            with self._lock:
                old = self._leases.pop(key, None)
                self._leases[key] = spare
                if old is not None:  # another call of this process leased meanwhile
                    self._queue(key, old.window, old.requests, old.tokens)
        return 0.0, -window - 1, True  # fleet windows are negative (see give_back)

    def _lease_calls(self, caps: tuple[int, int], tokens: int) -> int:
        """How many calls like this one a lease should cover (1: no lease)."""
        share = max(1, self._conn.members) * _LEASE_SHARE
        calls = LEASE_CALLS_MAX
        if caps[0]:
            calls = min(calls, caps[0] // share)
        if caps[1] and tokens:
            calls = min(calls, caps[1] // (share * tokens))
        return max(1, calls)

    def give_back(self, key: str, window: int, requests: int, tokens: int) -> None:
        """Queue capacity to return (fleet windows) or return it locally."""
        if window >= 0:
            self.local.give_back(key, window, requests, tokens)
            return
        with self._lock:
            self._queue(key, -window - 1, requests, tokens)

    def _queue(self, key: str, window: int, requests: int, tokens: int) -> None:
        if requests or tokens:
            pending = self._pending[(key, window)]
            pending[0] += requests
            pending[1] += tokens

    def flush(self) -> None:
        """Return expired leases and queued give-backs, claim and release grants (one round
        trip; the sync thread does it every 100 ms with the other parts' writes)."""
        self._conn.run_stages([self.stage])

    def stage(self, batch: ScriptBatch) -> Callable[[list[Any] | None], None] | None:
        """Add this process's limit writes to the sync thread's batch, every model's: expired
        leases and give-backs returned, grants claimed and released, and once a second the
        grants nobody claimed reaped."""
        now = time.monotonic()
        with self._lock:
            for key, lease in list(self._leases.items()):
                if now >= lease.until:
                    del self._leases[key]
                    self._queue(key, lease.window, lease.requests, lease.tokens)
            pending, self._pending = self._pending, defaultdict(lambda: [0, 0])
            claims, self._claims = self._claims, defaultdict(list)
            releases, self._releases = self._releases, defaultdict(list)
        reaping: list[str] = []
        if now >= self._next_reap and self._keys:
            self._next_reap = now + SYNC_INTERVAL_S
            reaping = list(self._keys)
        if not (pending or claims or releases or reaping):
            return None
        for key, grants in releases.items():
            batch.add(self._sync_script, self._keys_of(key), ["release", CLAIM_MS, *grants])
        for key, grants in claims.items():
            batch.add(self._sync_script, self._keys_of(key), ["claim", *grants])
        for (key, window), (requests, tokens) in pending.items():
            batch.add(self._sync_script, self._keys_of(key), ["give", window, requests, tokens])
        for key in reaping:
            batch.add(self._sync_script, self._keys_of(key), ["reap"])

        def settle(replies: list[Any] | None) -> None:
            if replies is not None:
                return
            # releases and claims are idempotent: sent again next time (a give-back is not:
            # one that may be lost leaves capacity unused until its window passes, never more)
            with self._lock:
                for key, grants in releases.items():
                    self._releases[key][:0] = grants
                for key, grants in claims.items():
                    self._claims[key][:0] = grants

        return settle

    def reap(self) -> None:
        """Return the grants whose takers never claimed them (the sync thread, every second,
        in its batch; this call: now, one round trip)."""
        self._next_reap = 0.0
        self.flush()
