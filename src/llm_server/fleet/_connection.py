"""The fleet's one Redis connection: short timeouts, one fallback switch, one sync thread."""

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
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.fleet import _clients, _scripts

__all__ = ["FleetConnection", "RedisFailure", "ScriptBatch"]

_log = logging.getLogger("llm_server.fleet")

RedisFailure = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call may raise when Redis is down, slow or refuses."""

SYNC_INTERVAL_S = 1.0
"""How often every process re-reads the shared breaker states (besides pub/sub)."""
FLUSH_INTERVAL_S = 0.1
"""How often aggregated outcomes and settled limits are written."""
_PREFIX = re.compile(r"[A-Za-z0-9_.-]+")  # no ':': no prefix can then start another's keys
MISCONFIGURED_RETRY_S = 10.0
"""How often a process whose Redis refused for a configuration reason checks it again."""


class ScriptBatch:
    """Scripts to run in one round trip: a pipeline of EVALSHA, with no SCRIPT EXISTS before
    it (redis-py's pipelined scripts ask that on every execute, a second round trip); a script
    Redis lost (a restart) is loaded and only the commands it refused are sent again."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, list[Any], list[Any]]] = []

    def add(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        """Queue one registered script (a redis-py ``Script``) with its keys and arguments."""
        self.calls.append((script, list(keys), list(args)))

    def run(self, client: redis.Redis) -> list[Any]:
        """Run every queued script; their replies in order (raises the first error)."""
        replies = self._send(client, range(len(self.calls)))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            for script in {id(self.calls[i][0]): self.calls[i][0] for i in missing}.values():
                client.script_load(script.script)
            for index, reply in zip(missing, self._send(client, missing), strict=True):
                replies[index] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _send(self, client: redis.Redis, indices: Sequence[int]) -> list[Any]:
        pipe = client.pipeline(transaction=False)
        for index in indices:
            script, keys, args = self.calls[index]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))


Stage = Callable[[ScriptBatch], Callable[[list[Any] | None], None] | None]
"""Adds a part's background writes to the tick's batch; returns what takes their replies
(``None`` when the batch failed: what is idempotent is queued again), or ``None``."""


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
        self._sync_turn = time.monotonic()  # when the sync thread last finished a turn
        self._suspect = threading.Event()
        self._last_timeout = -1e9
        self._patient = _clients.make_sync(
            url, {**self._options, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        )
        self._periodic: list[Callable[[], None]] = []
        self._flushers: list[Callable[[], None]] = []
        self._stages: list[Stage] = []
        self._urgent: list[Callable[[], None]] = []
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._resyncs: list[Callable[[], None]] = []
        self._listeners: dict[str, Callable[[str], None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = self.client.register_script(_scripts.HEARTBEAT)
        self._next_beat = 0.0
        self._stages.append(self._stage_beat)

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
            self.exercise(self._patient)
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
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="llm-server-fleet-sync", daemon=True
            )
            self._thread.start()
        if self._writer is None:
            self._writer = threading.Thread(
                target=self._write_loop, name="llm-server-fleet-writer", daemon=True
            )
            self._writer.start()

    def close(self) -> None:
        """Stop the threads, flush once more, and close the synchronous client."""
        self._stop.set()
        self._wake.set()
        for thread in (self._thread, self._writer):
            if thread is not None:
                thread.join(timeout=2)
        self._thread = self._writer = None
        if not self.fallback:
            self._write_urgent()
            self._flush()
        self.client.close()
        self._patient.close()

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
            self._timed_out(exc)
            self._wake.set()  # the writer looks every 100 ms while this is recent
            return
        self.degrade(exc)

    def _timed_out(self, exc: BaseException) -> None:
        self._note(exc, "timeout")
        self.timeouts += 1
        self._last_timeout = time.monotonic()
        self._suspect.set()

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
        self._note(exc, reason)
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

    def _note(self, exc: BaseException, reason: str) -> None:
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
        for client in (self.client, self._patient):
            with contextlib.suppress(*RedisFailure):
                client.connection_pool.disconnect()

    def _recover(self) -> None:
        for hook in self._resyncs:
            try:
                hook()
            except RedisFailure:
                return  # failed again: stay in fallback, the next ping retries
        with self._lock:
            self.fallback = False
            self.fallback_since = None
            fixed, self.misconfigured = self.misconfigured, None
        if fixed is not None:
            _log.warning("fleet: Redis at %s accepts what the fleet needs again", self.display_url)
        self._wake.set()  # what waited to be written (probe verdicts...) is written now
        _log.warning("fleet: Redis at %s answers again; state is shared again", self.display_url)

    # --- the sync thread --------------------------------------------------------------------

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
        if periodic is not None:
            self._periodic.append(periodic)
        if flush is not None:
            self._flushers.append(flush)
        if stage is not None:
            self._stages.append(stage)
        if resync is not None:
            self._resyncs.append(resync)
        if channel is not None:
            self._listeners[channel[0]] = channel[1]

    def urgent(self, write: Callable[[], None]) -> None:
        """Register work for the writer thread: run when :meth:`wake` is called, 100 ms after
        a write failed (so that what failed to be written is retried), and every 100 ms while
        a request-path command timed out in the last second (calls then queue work without
        waking it). An idle writer sleeps until woken: no wake-up every 100 ms taking the GIL
        from the event loop."""
        self._urgent.append(write)

    def wake(self) -> None:
        """Have the writer thread run its work now (never waits: the request path calls it)."""
        self._wake.set()

    def _write_loop(self) -> None:
        retry = False
        while not self._stop.is_set():
            # idle: sleep until woken (a call queued work, Redis answers again, close());
            # after a failed write: try again in 100 ms
            self._wake.wait(FLUSH_INTERVAL_S if retry else None)
            self._wake.clear()
            if self._stop.is_set():
                break
            if self.fallback:
                retry = False  # recovering wakes it
                continue
            # while a request-path command timed out lately, calls queue work without waking
            # the writer (a probe's verdict): it looks every 100 ms until that second passed
            retry = not self._write_urgent() or not self.reliable()

    def _write_urgent(self) -> bool:
        """Run the writer's work once; whether it all went through."""
        for write in self._urgent:
            try:
                write()
            except (TimeoutError, RedisTimeoutError) as exc:
                self._timed_out(exc)  # (retried in 100 ms)
                return False
            except RedisFailure as exc:
                self.degrade(exc)
                return False
            except Exception:  # a bug here must not end the thread: log it and go on
                _log.exception("fleet: writer thread error")
        return True

    def run_stages(self, stages: Sequence[Stage]) -> None:
        """Send what ``stages`` add in one round trip and hand each its replies (raises)."""
        batch = ScriptBatch()
        settles: list[tuple[Callable[[list[Any] | None], None], int, int]] = []
        for stage in stages:
            start = len(batch.calls)
            settle = stage(batch)
            if settle is not None:
                settles.append((settle, start, len(batch.calls)))
        if not batch.calls:
            return
        try:
            replies = batch.run(self.client)
        except RedisFailure:
            for settle, _, _ in settles:
                settle(None)
            raise
        for settle, start, end in settles:
            settle(replies[start:end])

    def _flush(self) -> None:
        try:
            self.run_stages(self._stages)
        except (TimeoutError, RedisTimeoutError) as exc:
            self._note(exc, "timeout")
            self._suspect.set()
            return
        except RedisFailure as exc:
            self.degrade(exc)
            return
        for flush in self._flushers:
            try:
                flush()
            except (TimeoutError, RedisTimeoutError) as exc:
                self._note(exc, "timeout")
                self._suspect.set()
                return
            except RedisFailure as exc:
                self.degrade(exc)
                return

    def _run(self) -> None:
        pubsub: Any = None
        next_sync = 0.0
        while not self._stop.is_set():
            if self.fallback:
                if pubsub is not None:
                    pubsub.close()
                    pubsub = None
                if self._wait_for_redis():
                    next_sync = 0.0
                self._sync_turn = time.monotonic()
                continue
            if self._suspect.is_set() and not self._verify():
                continue
            try:
                if pubsub is None and self._listeners:
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(*self._listeners)
                now = time.monotonic()
                if now >= next_sync:
                    next_sync = now + SYNC_INTERVAL_S
                    for periodic in self._periodic:
                        periodic()
                self._flush()
                self._sync_turn = time.monotonic()
                self._listen(pubsub, FLUSH_INTERVAL_S)
            except (TimeoutError, RedisTimeoutError) as exc:
                self._note(exc, "timeout")
                self._suspect.set()  # checked patiently on the next turn
            except RedisFailure as exc:
                self.degrade(exc)
            except Exception:  # a bug here must not end the thread: log it and go on
                _log.exception("fleet: sync thread error")
                self._stop.wait(SYNC_INTERVAL_S)
        if pubsub is not None:
            pubsub.close()

    def _verify(self) -> bool:
        """After a timeout: is Redis there (a ping allowed 1 s)? Falls back if not."""
        self._suspect.clear()
        try:
            self._patient.ping()
        except RedisFailure as exc:
            self.degrade(exc)
            return False
        return True

    def _wait_for_redis(self) -> bool:
        """In fallback: check Redis once a second (every 10 s while misconfigured) with what
        the fleet needs, a write included; resync when it passes (returns whether)."""
        wait = SYNC_INTERVAL_S if self.misconfigured is None else MISCONFIGURED_RETRY_S
        if self._stop.wait(wait):
            return False
        try:
            self.exercise(self.client)
        except RedisFailure as exc:
            self.degrade(exc)  # (logs nothing new: already in fallback, same reason)
            return False
        self._recover()
        return not self.fallback

    def _listen(self, pubsub: Any, seconds: float) -> None:
        """Hand pub/sub messages to their listeners for ``seconds`` (or just wait)."""
        if pubsub is None:
            self._stop.wait(seconds)
            return
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stop.is_set():
            message = pubsub.get_message(timeout=left)
            if message is not None and message.get("type") == "message":
                self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        channel = message.get("channel")
        data = message.get("data")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if isinstance(data, bytes):
            data = data.decode()
        listener = self._listeners.get(str(channel))
        if listener is not None:
            listener(str(data))

    def describe(self) -> dict[str, Any]:
        """The fleet's health: Redis's URL, whether it is in use, processes seen, the last
        error and its reason, and how long ago the sync thread last finished a turn."""
        return {
            "misconfigured": self.misconfigured,
            "last_error": self.last_error,
            "last_error_reason": self.last_error_reason,
            "last_error_at": self.last_error_at,
            "sync_lag_s": round(max(0.0, time.monotonic() - self._sync_turn), 3),
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
