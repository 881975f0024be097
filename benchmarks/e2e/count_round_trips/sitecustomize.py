"""Counts a process's Redis round trips by command (benchmarks only: ``benchmarks/e2e/fleet.py``
puts this folder on ``PYTHONPATH`` of the workers it counts, with
``LLM_SERVER_BENCH_ROUND_TRIPS`` naming a folder).

One ``send_packed_command`` of redis-py is one round trip (a pipeline of several commands is
one, labelled ``pipeline(...)``). Every 0.2 s the counts are written to ``<folder>/<pid>.json``.
"""

from __future__ import annotations

import json
import os
import threading
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _names(packed: bytes | str | Iterable[bytes]) -> list[str]:
    """The command names in what redis-py packed for one send (RESP arrays of bulk strings)."""
    data = packed.encode() if isinstance(packed, str) else packed
    if not isinstance(data, bytes):
        data = b"".join(bytes(chunk) for chunk in data)
    names: list[str] = []
    at = 0
    while at < len(data):
        end = data.index(b"\r\n", at)
        count = int(data[at + 1 : end])
        at = end + 2
        for index in range(count):
            end = data.index(b"\r\n", at)
            size = int(data[at + 1 : end])
            if index == 0:
                names.append(data[end + 2 : end + 2 + size].decode().upper())
            at = end + 2 + size + 2
    return names


def _install(folder: Path) -> None:
    import redis.asyncio.connection
    import redis.connection

    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def note(packed: Any) -> None:
        names = _names(packed)
        label = names[0] if len(names) == 1 else "pipeline(" + "+".join(sorted(names)) + ")"
        with lock:
            counts[label] += 1

    sync_send = redis.connection.AbstractConnection.send_packed_command
    async_send = redis.asyncio.connection.AbstractConnection.send_packed_command

    def send(self: Any, command: Any, check_health: bool = True) -> None:
        note(command)
        sync_send(self, command, check_health)

    async def asend(self: Any, command: Any, check_health: bool = True) -> None:
        note(command)
        await async_send(self, command, check_health)

    redis.connection.AbstractConnection.send_packed_command = send  # type: ignore[method-assign]
    redis.asyncio.connection.AbstractConnection.send_packed_command = asend  # type: ignore[method-assign]

    def dump() -> None:
        path = folder / f"{os.getpid()}.json"
        while True:
            threading.Event().wait(0.2)
            with lock:
                text = json.dumps(dict(counts))
            path.with_suffix(".tmp").write_text(text)
            path.with_suffix(".tmp").replace(path)

    threading.Thread(target=dump, daemon=True, name="bench-round-trips").start()


if os.environ.get("LLM_SERVER_BENCH_ROUND_TRIPS"):
    _install(Path(os.environ["LLM_SERVER_BENCH_ROUND_TRIPS"]))
