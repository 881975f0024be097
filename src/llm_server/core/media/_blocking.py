"""Run blocking work (Pillow, file I/O, sync programs) off the event loop.

Why a limiter of our own: DSPy's async calls hop through ``asyncio.to_thread`` several times
per call, i.e. through the loop's *default executor*. Blocking work that fills that executor
stalls every model call (measured: 8 ms became 1012 ms). :func:`run_blocking`
therefore runs work in anyio's worker threads, bounded by a :class:`anyio.CapacityLimiter`
that belongs to the framework (one per event loop), never by the default executor.

anyio copies the caller's ``contextvars`` into the worker thread, so ``dspy.context(...)``,
OpenTelemetry spans and log context stay visible inside ``fn``.

Example::

    from llm_server.core.media._blocking import run_blocking

    thumbnail = await run_blocking(make_thumbnail, raw_bytes)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar, TypeVarTuple, Unpack

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

__all__ = ["blocking_limiter", "configure_blocking", "run_blocking"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

# One limiter per event loop: an anyio limiter must not be shared between loops, and tests
# (and some hosts) run several loops in one process.
_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("llm_server_blocking_limiter")
_workers: int | None = None


def _default_workers() -> int:
    if _workers is not None:
        return _workers
    from llm_server.core.config import FrameworkSettings

    return FrameworkSettings().blocking_workers


def configure_blocking(*, workers: int) -> None:
    """Set how many blocking jobs may run at once (default: ``blocking_workers`` setting).

    Applies to limiters created afterwards; call it at startup, before the first request.

    Args:
        workers: Threads the framework's blocking work may use at once (at least 1).

    Raises:
        ConfigurationError: ``workers`` is less than 1.
    """
    global _workers  # noqa: PLW0603 - one process-wide default, set once at startup
    if workers < 1:
        from llm_server.core.errors import ConfigurationError

        raise ConfigurationError(f"blocking workers must be at least 1, got {workers}")
    _workers = workers


def blocking_limiter() -> anyio.CapacityLimiter:
    """The framework's limiter for blocking work in the running event loop.

    Created on first use with :func:`configure_blocking`'s value, else the
    ``LLM_SERVER_BLOCKING_WORKERS`` setting (default 4). Must be called from async code.
    """
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(_default_workers())
        _LIMITER.set(limiter)
        return limiter


async def run_blocking(
    fn: Callable[[Unpack[Ts]], T],
    *args: *Ts,
    limiter: anyio.CapacityLimiter | None = None,
) -> T:
    """Call ``fn(*args)`` in a worker thread and return its result.

    The event loop keeps serving other requests meanwhile. Cancelling the caller waits for
    ``fn`` to finish (a thread cannot be interrupted), then raises the cancellation.

    Args:
        fn: The blocking function.
        *args: Its positional arguments (use ``functools.partial`` for keywords).
        limiter: Bounds concurrency; defaults to :func:`blocking_limiter`.

    Returns:
        Whatever ``fn`` returns; whatever it raises propagates unchanged.
    """
    return await anyio.to_thread.run_sync(fn, *args, limiter=limiter or blocking_limiter())
