"""The fleet's one Redis connection: short timeouts, one fallback switch, one sync thread."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    RedisError,
    ResponseError,
)
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from llm_server.core.errors import ConfigurationError
from llm_server.core.telemetry._redaction import redact, register_secret
from llm_server.fleet import _scripts

__all__ = ["FleetConnection", "RedisFailure"]

_log = logging.getLogger("llm_server.fleet")

RedisFailure = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call may raise when Redis is down, slow or refuses."""

SYNC_INTERVAL_S = 1.0
"""How often every process re-reads the shared breaker states (besides pub/sub)."""
FLUSH_INTERVAL_S = 0.1
"""How often aggregated outcomes and settled limits are written."""


def _display(url: str) -> str:
    """The URL without credentials, to name it in messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


class FleetConnection:
    """Redis for one process: clients, the fallback switch, and the background sync thread.

    Every command has ``timeout_s``; none is retried by the client. When one fails, the
    process falls back to local state (:attr:`fallback`), logs one warning, and the sync
    thread pings Redis every second; when it answers, the registered resync hooks run and
    the shared state is used again.

    Args:
        url: ``redis://``, ``rediss://`` or ``unix://`` URL.
        password: Password, when not in the URL.
        prefix: Prefix of every key.
        timeout_s: Timeout of one command (and of connecting).
    """

    def __init__(
        self, url: str, *, password: str | None = None, prefix: str, timeout_s: float
    ) -> None:
        self.display_url = _display(url)
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: the scheme must be redis://, rediss:// or unix:// "
                f"(got {self.display_url})"
            )
        if parts.password:
            register_secret(parts.password)
        if password:
            register_secret(password)
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.process_id = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "protocol": 2,  # RESP2: what every redis-server speaks; 8.x clients default to 3
            "health_check_interval": 0,
        }
        if password:
            self._options["password"] = password
        self._url = url
        try:
            self.client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **self._options)
        except (ValueError, RedisError) as exc:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: {self.display_url} is not a usable Redis URL: "
                f"{redact(str(exc))}"
            ) from None
        self._async: dict[int, tuple[asyncio.AbstractEventLoop, redis.asyncio.Redis]] = {}
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
        self._suspect = threading.Event()
        self._last_timeout = -1e9
        self._patient = redis.Redis.from_url(
            url,
            **{**self._options, "socket_timeout": 1.0, "socket_connect_timeout": 1.0},
            retry=Retry(NoBackoff(), 0),
        )
        self._periodic: list[Callable[[], None]] = []
        self._flushers: list[Callable[[], None]] = []
        self._resyncs: list[Callable[[], None]] = []
        self._listeners: dict[str, Callable[[str], None]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._heartbeat = self.client.register_script(_scripts.HEARTBEAT)
        self._periodic.append(self.beat)

    # --- startup and shutdown ---------------------------------------------------------------

    def check(self, *, required: bool) -> None:
        """Ping Redis once at startup.

        Raises:
            ConfigurationError: Redis refused the credentials, or (``required``) is unreachable.
        """
        try:
            self.client.ping()
        except (AuthenticationError, AuthorizationError, ResponseError) as exc:
            raise ConfigurationError(
                f"LLM_SERVER_REDIS_URL: Redis at {self.display_url} refused the connection: "
                f"{redact(str(exc))} (check the password: LLM_SERVER_REDIS_PASSWORD or the URL)"
            ) from None
        except RedisFailure as exc:
            detail = f"{type(exc).__name__}: {redact(str(exc))}"
            if required:
                raise ConfigurationError(
                    f"LLM_SERVER_REDIS_URL: cannot reach Redis at {self.display_url} ({detail}); "
                    "start redis-server or unset LLM_SERVER_REDIS_REQUIRED to start per process"
                ) from None
            self.degrade(exc)
            return
        self.beat()
        _log.info("fleet: breakers and limits shared through Redis at %s", self.display_url)

    def start(self) -> None:
        """Start the background sync thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="llm-server-fleet-sync", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the sync thread, flush once more, and close the synchronous client."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        if not self.fallback:
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
        if entry is None or entry[0] is not loop:
            # The async client takes redis-py's async retry type (a sync one warns since 8.2).
            client = redis.asyncio.Redis.from_url(
                self._url, retry=redis.asyncio.retry.Retry(NoBackoff(), 0), **self._options
            )
            entry = self._async[id(loop)] = (loop, client)
        return entry[1]

    def key(self, *parts: str) -> str:
        """A key under the prefix: ``prefix:part:part``."""
        return ":".join((self.prefix, *parts))

    def beat(self) -> None:
        """Say this process is alive, and count the processes that are (every second)."""
        alive = self._heartbeat(keys=[self.key("members")], args=[self.process_id])
        self.members = max(1, int(alive))

    # --- fallback ---------------------------------------------------------------------------

    def failed(self, exc: BaseException) -> None:
        """A command on the request path failed; the caller decides this call locally.

        A refused or broken connection falls back at once. A timeout may be a slow Redis or
        only a busy event loop that read the answer late (under full load, loop lag alone
        can pass 50 ms), so the sync thread checks Redis with a patient ping first.
        """
        if isinstance(exc, TimeoutError | RedisTimeoutError):
            self.timeouts += 1
            self._last_timeout = time.monotonic()
            self._suspect.set()
            return
        self.degrade(exc)

    def reliable(self) -> bool:
        """Whether shared decisions can be trusted now: not in fallback, and no request-path
        command timed out in the last second (a slow Redis loses writes: decide locally)."""
        return not self.fallback and time.monotonic() - self._last_timeout > SYNC_INTERVAL_S

    def degrade(self, exc: BaseException) -> None:
        """Fall back to local state after a failed command (warns once per outage)."""
        with self._lock:
            if self.fallback:
                return
            self.fallback = True
            self.fallback_since = time.time()
            self.fallbacks += 1
        _log.warning(
            "fleet: Redis at %s failed (%s: %s); breakers and limits are per process until it "
            "answers again",
            self.display_url,
            type(exc).__name__,
            redact(str(exc)) or "no detail",
        )

    def _recover(self) -> None:
        for hook in self._resyncs:
            try:
                hook()
            except RedisFailure:
                return  # failed again: stay in fallback, the next ping retries
        with self._lock:
            self.fallback = False
            self.fallback_since = None
        _log.warning("fleet: Redis at %s answers again; state is shared again", self.display_url)

    # --- the sync thread --------------------------------------------------------------------

    def on_sync(
        self,
        *,
        periodic: Callable[[], None] | None = None,
        flush: Callable[[], None] | None = None,
        resync: Callable[[], None] | None = None,
        channel: tuple[str, Callable[[str], None]] | None = None,
    ) -> None:
        """Register work for the sync thread: every second, every 100 ms, on recovery, and
        on a pub/sub channel's messages (called with the message)."""
        if periodic is not None:
            self._periodic.append(periodic)
        if flush is not None:
            self._flushers.append(flush)
        if resync is not None:
            self._resyncs.append(resync)
        if channel is not None:
            self._listeners[channel[0]] = channel[1]

    def _flush(self) -> None:
        for flush in self._flushers:
            try:
                flush()
            except (TimeoutError, RedisTimeoutError):
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
                self._listen(pubsub, FLUSH_INTERVAL_S)
            except (TimeoutError, RedisTimeoutError):
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
        """In fallback: ping once a second; resync when Redis answers (returns whether)."""
        if self._stop.wait(SYNC_INTERVAL_S):
            return False
        try:
            self.client.ping()
        except RedisFailure:
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
        """The fleet's health: Redis's URL, whether it is in use, processes seen."""
        return {
            "redis": self.display_url,
            "shared": not self.fallback,
            "fallback_since": self.fallback_since,
            "fallbacks": self.fallbacks,
            "members": self.members,
            "timeouts": self.timeouts,
        }


def eval_script(client: redis.Redis, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
    """Run a registered script on ``client`` (EVALSHA, loading it when Redis lost it)."""
    return script(keys=list(keys), args=list(args), client=client)
