"""Redis clients for a URL: a server (``redis://``, ``rediss://``, ``unix://``) or the primary
that Redis Sentinel names (``redis+sentinel://``), and what a Redis error means to the fleet.

The Sentinel form is ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``:
the hosts are the sentinels, ``service`` the name they monitor (``sentinel monitor <service>
...``), the password (or ``LLM_SERVER_REDIS_PASSWORD``) is the primary's. Every new connection
asks the sentinels which server is the primary, and a connection that finds its server demoted
(``READONLY``) is dropped, so the clients follow a failover by themselves (redis-py's
``redis.sentinel`` and ``redis.asyncio.sentinel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.asyncio.sentinel
import redis.sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    ResponseError,
)
from redis.retry import Retry

__all__ = ["SCHEMES", "classify", "display", "make_async", "make_sync"]

SCHEMES = ("redis", "rediss", "unix", "redis+sentinel")


def display(url: str) -> str:
    """The URL without credentials, to name it in messages."""
    try:
        parts = urlsplit(url)
        if parts.scheme == "redis+sentinel":
            hosts = parts.netloc.rpartition("@")[2]
            return f"{parts.scheme}://{hosts}{parts.path}"
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:
        return "<unparseable URL>"


@dataclass(frozen=True, slots=True)
class _Sentinels:
    hosts: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


def _sentinels(url: str) -> _Sentinels:
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a sentinel must be host:port (got {item.strip()!r})")
        hosts.append((host.strip("[]"), int(port)))
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise ValueError("the path must be /<service name> or /<service name>/<db>")
    return _Sentinels(
        hosts,
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(username) or None,
        unquote(password) or None,
    )


def password_in(url: str) -> str | None:
    """The password a URL carries (to register it as a secret)."""
    parts = urlsplit(url)
    if parts.scheme == "redis+sentinel":
        return _sentinels(url).password
    return parts.password


def make_sync(url: str, options: dict[str, Any]) -> redis.Redis:
    """A synchronous client, never retrying by itself."""
    if urlsplit(url).scheme != "redis+sentinel":
        return redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    found = _sentinels(url)
    sentinel = redis.sentinel.Sentinel(
        found.hosts, sentinel_kwargs=_sentinel_options(options), **_primary(found, options)
    )
    client: redis.Redis = sentinel.master_for(found.service, retry=Retry(NoBackoff(), 0))
    return client


def make_async(url: str, options: dict[str, Any]) -> redis.asyncio.Redis:
    """An asyncio client for the running loop, never retrying by itself."""
    # redis-py's async retry type (a sync one warns since 8.2)
    retry = redis.asyncio.retry.Retry(NoBackoff(), 0)
    if urlsplit(url).scheme != "redis+sentinel":
        return redis.asyncio.Redis.from_url(url, retry=retry, **options)
    found = _sentinels(url)
    sentinel = redis.asyncio.sentinel.Sentinel(
        found.hosts, sentinel_kwargs=_sentinel_options(options), **_primary(found, options)
    )
    client: redis.asyncio.Redis = sentinel.master_for(found.service, retry=retry)
    return client


def _primary(found: _Sentinels, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {**options, "db": found.db}
    if found.username:
        kwargs["username"] = found.username
    if found.password:
        kwargs["password"] = found.password
    return kwargs


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    # the sentinels themselves: the same timeouts, no password (theirs is not the primary's)
    return {
        "socket_timeout": options["socket_timeout"],
        "socket_connect_timeout": options["socket_connect_timeout"],
        "protocol": 2,
    }


def classify(exc: BaseException) -> str:
    """What a failed command says: ``readonly`` (the server was demoted), ``noperm``,
    ``wrongtype`` or ``oom`` (misconfiguration: retrying will not help), else ``failed``."""
    text = str(exc)
    if isinstance(exc, ReadOnlyError) or "READONLY" in text[:20]:
        return "readonly"
    if isinstance(exc, NoPermissionError) or "NOPERM" in text:
        return "noperm"
    if isinstance(exc, OutOfMemoryError) or text.startswith("OOM"):
        return "oom"
    if isinstance(exc, ResponseError) and "WRONGTYPE" in text:
        return "wrongtype"
    return "failed"
