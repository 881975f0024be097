"""One round trip of scripts (:class:`ScriptBatch`), what may fail in it, and a part's stage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, RedisError, ResponseError

__all__ = ["RedisFailure", "ScriptBatch", "Stage"]

RedisFailure = (RedisError, OSError, asyncio.TimeoutError)
"""What a Redis call may raise when Redis is down, slow or refuses."""


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
        # one send and a read per reply on a pooled connection: redis-py's pipeline costs
        # ~3x the CPU here (per-argument encoding, its command stack, response callbacks),
        # and the sync thread sends one every 100 ms
        packed = b"".join(_pack(self.calls[index]) for index in indices)
        pool = client.connection_pool
        connection: Any = pool.get_connection()
        try:
            connection.send_packed_command([packed])
            replies: list[Any] = []
            for _ in indices:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:  # (NOSCRIPT among them) the others still come
                    replies.append(exc)
        except BaseException:
            connection.disconnect()  # replies may be left on it: nobody else may read them
            raise
        finally:
            pool.release(connection)
        return replies


def _pack(call: tuple[Any, list[Any], list[Any]]) -> bytes:
    """``EVALSHA sha numkeys keys... args...`` in RESP (what redis-py's encoder sends for
    text, integers and floats)."""
    script, keys, args = call
    items = [b"EVALSHA", script.sha.encode(), b"%d" % len(keys)]
    for value in (*keys, *args):
        if isinstance(value, bytes):
            items.append(value)
        elif isinstance(value, str):
            items.append(value.encode())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            items.append(repr(value).encode())
        else:
            raise TypeError(f"a script argument must be text or a number, not {value!r}")
    out = [b"*%d\r\n" % len(items)]
    for item in items:
        out.append(b"$%d\r\n%s\r\n" % (len(item), item))
    return b"".join(out)


Stage = Callable[[ScriptBatch], Callable[[list[Any] | None], None] | None]
"""Adds a part's background writes to the tick's batch; returns what takes their replies
(``None`` when the batch failed: what is idempotent is queued again), or ``None``."""
