"""One round trip of scripts (:class:`ScriptBatch`), what may fail in it, and a part's stage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.exceptions import NoScriptError, RedisError

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
        pipe = client.pipeline(transaction=False)
        for index in indices:
            script, keys, args = self.calls[index]
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        return list(pipe.execute(raise_on_error=False))


Stage = Callable[[ScriptBatch], Callable[[list[Any] | None], None] | None]
"""Adds a part's background writes to the tick's batch; returns what takes their replies
(``None`` when the batch failed: what is idempotent is queued again), or ``None``."""
