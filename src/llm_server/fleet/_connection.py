"""The fleet's one Redis connection: its clients, short timeouts, the fallback switch, failover
and misconfiguration handling (its background threads: :mod:`._sync_threads`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.fleet import _clients, _scripts
from llm_server.fleet._batch import RedisFailure, ScriptBatch, Stage
from llm_server.fleet._sync_threads import (
    FLUSH_INTERVAL_S,
    MISCONFIGURED_RETRY_S,
    SYNC_INTERVAL_S,
    SyncThreads,
)

__all__ = [
    "FLUSH_INTERVAL_S",
    "MISCONFIGURED_RETRY_S",
    "SYNC_INTERVAL_S",
    "FleetConnection",
    "RedisFailure",
    "ScriptBatch",
    "Stage",
]

_log = logging.getLogger("llm_server.fleet")

_PREFIX = re.compile(r"[A-Za-z0-9_.-]+")  # no ':': no prefix can then start another's keys


class FleetConnection:
    """Redis for one process: clients, the fallback switch, and the background sync thread.

    Every command has ``timeout_s``; none is retried by the client. When one fails, the
    process falls back to local state (:attr:`fallback`), logs one warning, and the sync
    thread checks Redis every second with what the fleet needs (a write, a script, PUBLISH
    and SUBSCRIBE); when that passes, the registered resync hooks run and the shared state is
    used again. ``READONLY`` (the server was demoted by a failover) drops every pooled
    connection, so the next ones reach the new primary. ``NOPERM``, ``WRONGTYPE`` and ``OOM``
    are configuration problems: one error names the setting to fix, and the process stays on
    local state (:attr:`misconfigured`), checking again every 10 s, instead of flapping.

    Args:
        url: ``redis://``, ``rediss://``, ``unix://`` or ``redis+sentinel://`` URL (see
            :mod:`llm_server.fleet`).
        password: Password, when not in the URL.
        prefix: Prefix of every key (letters, digits, ``_``, ``.``, ``-``: no ``:``, so that
            no application's prefix starts another's keys).
        timeout_s: Timeout of one command (and of connecting).
    """

    def __init__(
        self, url: str, *, password: str | None = None, prefix: str, timeout_s: float
    ) -> None:
        if not _PREFIX.fullmatch(prefix):
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_PREFIX: {prefix!r} must be letters, digits, '_', '.' or '-' "
                "(no ':': keys are '<prefix>:...', so 'app' and 'app:x' would overlap)"
            )
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.client = self._open(url, password)
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis, int]] = {}
        self._pools = 0  # bumped when every pooled connection must go (READONLY)
        self._closing: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()
        self.fallback = False
        """True while Redis failed: breakers and limits are per process."""
        self.fallback_since: float | None = None
        self.fallbacks = 0
        """Times this process fell back so far."""
        self.members = 1
        """Processes seen alive in the last 5 s (this one included)."""
        self.timeouts = 0
        """Request-path commands that timed out (each call then decided locally)."""
        self.misconfigured: str | None = None
        """Why Redis refused for a configuration reason (NOPERM, WRONGTYPE, OOM), while so."""
        self.last_error: str | None = None
        """The latest failed command's error (redacted)."""
        self.last_error_reason: str | None = None
        """Its kind: ``timeout``, ``failed``, ``readonly``, ``noperm``, ``wrongtype``, ``oom``."""
        self.last_error_at: float | None = None
        self._last_timeout = -1e9
        self.patient = _clients.make_sync(
            url, {**self._options, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        )
        """A client allowed 1 s: the checks after a timeout."""
        self.threads = SyncThreads(self)
        """The background sync and writer threads, and the work registered for them."""
        self._heartbeat = self.client.register_script(_scripts.HEARTBEAT)
        self._next_beat = 0.0
        self.threads.on_sync(stage=self._stage_beat)

    def _open(self, url: str, password: str | None) -> redis.Redis:
        """Check the URL, keep its secrets out of every message, and make the client."""
        self.display_url = _clients.display(url)
        parts = urlsplit(url)
        if parts.scheme not in _clients.SCHEMES:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: the scheme must be redis://, rediss://, unix:// or "
                f"redis+sentinel:// (got {self.display_url})"
            )
        try:
            in_url = _clients.password_in(url)
        except ValueError as exc:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: {self.display_url} is not a usable Redis URL: {exc}"
            ) from None
        if in_url:
            register_secret(in_url)
        if password:
            register_secret(password)
        self._options: dict[str, Any] = {
            "socket_timeout": self.timeout_s,
            "socket_connect_timeout": self.timeout_s,
            "protocol": 2,  # RESP2: what every redis-server speaks; 8.x clients default to 3
            "health_check_interval": 0,
        }
        if password:
            self._options["password"] = password
        self._url = url
        try:
            return _clients.make_sync(url, self._options)
        except (ValueError, RedisError) as exc:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: {self.display_url} is not a usable Redis URL: "
                f"{redact(str(exc))}"
            ) from None

    # --- startup and shutdown ---------------------------------------------------------------

    def check(self, *, required: bool) -> None:
        """Check Redis once at startup with what the fleet needs: a write, a script, PUBLISH
        and SUBSCRIBE on the prefix's keys and channels.

        Raises:
            ConfigurationError: Redis refused the credentials; or (``required``) it is
                unreachable, or refuses what the fleet needs (ACL rights, a replica, memory).
        """
        try:
            self.client.ping()
        except (AuthenticationError, AuthorizationError, ResponseError) as exc:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: Redis at {self.display_url} refused the connection: "
                f"{redact(str(exc))} (check the password: LLM_SERVER_REDIS_PASSWORD or the URL)"
            ) from None
        except RedisFailure as exc:
            self._unreachable(exc, required=required)
            return
        try:
            self.exercise(self.patient)
        except ResponseError as exc:
            if required:
                raise ConfigurationError(
                    f"{self._explain(exc)} (LLM_SERVER_REDIS_REQUIRED is set)"
                ) from None
            self.degrade(exc)
            return
        except RedisFailure as exc:
            self._unreachable(exc, required=required)
            return
        _log.info("fleet: breakers and limits shared through Redis at %s", self.display_url)

    def _unreachable(self, exc: BaseException, *, required: bool) -> None:
        detail = f"{type(exc).__name__}: {redact(str(exc))}"
        if required:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: cannot reach Redis at {self.display_url} ({detail}); "
                "start redis-server or unset LLM_SERVER_REDIS_REQUIRED to start per process"
            ) from None
        self.degrade(exc)

    def exercise(self, client: redis.Redis) -> None:
        """Run once what the fleet needs: a write, a script, PUBLISH, SUBSCRIBE (raises)."""
        client.set(self.key("check"), self.process_id, px=60_000)
        alive = self._heartbeat(keys=[self.key("members")], args=[self.process_id], client=client)
        self.members = max(1, int(alive))
        client.publish(self.key("check"), self.process_id)
        pubsub: Any = client.pubsub()
        try:
            pubsub.subscribe(self.key("cb"))
            reply = pubsub.get_message(timeout=1.0)  # the confirmation, or NOPERM
            if reply is None:
                raise RedisTimeoutError("SUBSCRIBE was not confirmed within 1 s")
        finally:
            pubsub.close()

    def start(self) -> None:
        """Start the background sync and writer threads (idempotent)."""
        self.threads.start()

    def close(self) -> None:
        """Stop the threads, flush once more, and close the synchronous client."""
        self.threads.stop()
        if not self.fallback:
            self.threads.write_urgent()
            self.threads.flush()
        self.client.close()
        self.patient.close()

    async def aclose(self) -> None:
        """Close the running loop's async client (call from the loop that used it)."""
        loop = asyncio.get_running_loop()
        entry = self._async.pop(id(loop), None)
        if entry is not None:
            await entry[1].aclose()

    # --- clients and scripts ----------------------------------------------------------------

    def async_client(self) -> redis.asyncio.Redis:
        """The running event loop's async client (one per loop, made on first use)."""
        loop = asyncio.get_running_loop()
        entry = self._async.get(id(loop))
        if entry is None or entry[0] is not loop or entry[2] != self._pools:
            if entry is not None and entry[0] is loop:  # READONLY: its connections must go
                task = loop.create_task(entry[1].aclose())
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            client = _clients.make_async(self._url, self._options)
            entry = self._async[id(loop)] = (loop, client, self._pools)
        return entry[1]

    def key(self, *parts: str) -> str:
        """A key under the prefix: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    def beat(self) -> None:
        """Say this process is alive, and count the processes that are (now; the sync thread
        does it every second in its batch)."""
        alive = self._heartbeat(keys=[self.key("members")], args=[self.process_id])
        self.members = max(1, int(alive))

    def _stage_beat(self, batch: ScriptBatch) -> Callable[[list[Any] | None], None] | None:
        now = time.monotonic()
        if now < self._next_beat:
            return None
        self._next_beat = now + SYNC_INTERVAL_S
        batch.add(self._heartbeat, [self.key("members")], [self.process_id])

        def settle(replies: list[Any] | None) -> None:
            if replies:
                self.members = max(1, int(replies[0]))
            else:
                self._next_beat = 0.0  # failed: beat on the next turn

        return settle

    # --- fallback ---------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """A command on the request path failed; the caller decides this call locally.

        A refused or broken connection falls back at once. A timeout may be a slow Redis or
        only a busy event loop that read the answer late (under full load, loop lag alone
        can pass 50 ms), so the sync thread checks Redis with a patient ping first.
        """
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            self.timed_out(exc)
            self.threads.wake.set()  # the writer looks every 100 ms while this is recent
            return
        self.degrade(exc)

    def timed_out(self, exc: BaseException) -> None:
        """A command timed out: shared decisions wait a second; the sync thread checks."""
        self.note(exc, "timeout")
        self.timeouts += 1
        self._last_timeout = time.monotonic()
        self.threads.suspect.set()

    def reliable(self) -> bool:
        """Whether shared decisions can be trusted now: not in fallback, and no request-path
        command timed out in the last second (a slow Redis loses writes: decide locally)."""
        return not self.fallback and time.monotonic() - self._last_timeout > SYNC_INTERVAL_S

    def degrade(self, exc: BaseException) -> None:
        """Fall back to local state after a failed command (warns once per outage).

        ``READONLY`` drops every pooled connection (the next ones reach the new primary);
        a configuration error (``NOPERM``, ``WRONGTYPE``, ``OOM``) is logged once, as an
        error naming what to fix, and kept in :attr:`misconfigured` until a check passes.
        """
        reason = _clients.classify(exc)
        self.note(exc, reason)
        if reason == "readonly":
            self._drop_connections()
        explained = self._explain(exc) if reason in ("noperm", "wrongtype", "oom") else None
        with self._lock:
            repeated = explained is not None and explained == self.misconfigured
            if explained is not None:
                self.misconfigured = explained
            if self.fallback:
                first = False
            else:
                first = True
                self.fallback = True
                self.fallback_since = time.time()
                self.fallbacks += 1
        if explained is not None:
            if not repeated:
                _log.error("fleet: %s; breakers and limits are per process until fixed", explained)
            return
        if first:
            _log.warning(
                "fleet: Redis at %s failed (%s: %s); breakers and limits are per process until "
                "it answers again%s",
                self.display_url,
                type(exc).__name__,
                redact(str(exc)) or "no detail",
                " (it is a replica now: reconnecting)" if reason == "readonly" else "",
            )

    def note(self, exc: BaseException, reason: str) -> None:
        """Remember the latest failed command's error and its kind (for :meth:`describe`)."""
        self.last_error = f"{type(exc).__name__}: {redact(str(exc)) or 'no detail'}"
        self.last_error_reason = reason
        self.last_error_at = time.time()

    def _explain(self, exc: BaseException) -> str:
        """One sentence naming the setting that fixes a configuration error."""
        detail = redact(str(exc))
        reason = _clients.classify(exc)
        if reason == "noperm":
            return (
                f"LLM_SERVER_REDIS_URL: the Redis user at {self.display_url} lacks a right the "
                f"fleet needs ({detail}): grant it keys and channels {self.prefix}:* and the "
                "read, write, scripting and pubsub commands (see docs/how-to/fleet.md)"
            )
        if reason == "wrongtype":
            return (
                f"LLM_SERVER_REDIS_PREFIX: a key under {self.prefix!r} at {self.display_url} "
                f"holds another kind of value ({detail}); something else writes under this "
                "prefix: give this application a prefix of its own"
            )
        if reason == "oom":
            return (
                f"Redis at {self.display_url} is out of memory and refuses writes ({detail}): "
                "raise its maxmemory, or set maxmemory-policy to volatile-lru or volatile-ttl "
                "(see docs/how-to/fleet.md)"
            )
        if reason == "readonly":
            return (
                f"LLM_SERVER_REDIS_URL: {self.display_url} is a read-only replica ({detail}): "
                "point it at the primary, or use redis+sentinel://"
            )
        return f"LLM_SERVER_REDIS_URL: Redis at {self.display_url} refused: {detail}"

    def _drop_connections(self) -> None:
        """Close every pooled connection (the async clients are remade on their next use)."""
        self._pools += 1
        for client in (self.client, self.patient):
            with contextlib.suppress(*RedisFailure):
                client.connection_pool.disconnect()

    def recovered(self) -> None:
        """Redis passed the check and every resync hook ran: share state again."""
        with self._lock:
            self.fallback = False
            self.fallback_since = None
            fixed, self.misconfigured = self.misconfigured, None
        if fixed is not None:
            _log.warning("fleet: Redis at %s accepts what the fleet needs again", self.display_url)
        _log.warning("fleet: Redis at %s answers again; state is shared again", self.display_url)

    # --- the background threads' work ---------------------------------------------------------

    def on_sync(
        self,
        *,
        periodic: Callable[[], None] | None = None,
        flush: Callable[[], None] | None = None,
        resync: Callable[[], None] | None = None,
        channel: tuple[str, Callable[[str], None]] | None = None,
        stage: Stage | None = None,
    ) -> None:
        """Register work for the sync thread: every second, every 100 ms, on recovery, and
        on a pub/sub channel's messages (called with the message). ``stage`` adds writes to
        the batch sent every 100 ms: every part's, for every model, in one round trip."""
        self.threads.on_sync(
            periodic=periodic, flush=flush, resync=resync, channel=channel, stage=stage
        )

    def urgent(self, write: Callable[[], None]) -> None:
        """Register work for the writer thread: run when :meth:`wake` is called, 100 ms after
        a write failed (so that what failed to be written is retried), and every 100 ms while
        a request-path command timed out in the last second (calls then queue work without
        waking it). An idle writer sleeps until woken: no wake-up every 100 ms taking the GIL
        from the event loop."""
        self.threads.urgent(write)

    def wake(self) -> None:
        """Have the writer thread run its work now (never waits: the request path calls it)."""
        self.threads.wake.set()

    def run_stages(self, stages: Sequence[Stage]) -> None:
        """Send what ``stages`` add in one round trip and hand each its replies (raises)."""
        self.threads.run_stages(stages)

    def describe(self) -> dict[str, Any]:
        """The fleet's health: Redis's URL, whether it is in use, processes seen, the last
        error and its reason, and how long ago the sync thread last finished a turn."""
        return {
            "misconfigured": self.misconfigured,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "last_error_at": self.last_error_at,
            "sync_lag_s": round(max(0.0, time.monotonic() - self.threads.turn), 3),
            "redis": self.display_url,
            "shared": not self.fallback,
            "fallback_since": self.fallback_since,
            "fallbacks": self.fallbacks,
            "members": self.members,
            "timeouts": self.timeouts,
        }


def on_event_loop() -> bool:
    """Whether this thread runs an event loop (where nothing may wait on Redis)."""
    return asyncio._get_running_loop() is not None


def eval_script(client: redis.Redis, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a registered script on ``client`` (EVALSHA, loading it when Redis lost it)."""
    return script(keys=list(keys), args=list(args), client=client)
