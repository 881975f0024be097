"""DSPy's native (lm15) engines as a managed model uses them: pool size, timed waits, routing.

DSPy builds an engine lazily, per event loop, and stores it in a dict; a
:class:`~llm_server.models._managed_lm.ManagedLM` gives DSPy a :class:`PoolSizedEngines` as
that dict, which sizes each engine's connection pool (the model's ``max_connections``), times
the waits for a free connection into the request's scope, and routes calls on the loop once
the engine's provider is built. An lm15 without these internals is left as it is.
"""

from __future__ import annotations

from llm_server._offline import ensure_offline

ensure_offline()

import asyncio  # noqa: E402 -- after ensure_offline() on purpose
import dataclasses  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from typing import Any  # noqa: E402

from dspy.lm15 import RouterConfig  # noqa: E402

from llm_server.models._request_scope import current_scope  # noqa: E402

__all__ = ["PoolSizedEngines", "route_on_loop"]


class PoolSizedEngines(dict[Any, Any]):
    """DSPy's per-loop engine store: sizes each native (lm15) engine's pool and times its waits.

    DSPy builds an engine lazily, per event loop, with lm15's default of 100 connections and
    no way to pass another; it stores each one here, where it is re-initialized (before it
    opened a connection) with the model's ``max_connections`` when one is set. The engine's pool is
    also instrumented: the time each call waits for a free connection is added to the
    request's :class:`RequestScope` (``connection_wait_s``), which the backend reports.
    """

    def __init__(self, max_connections: int | None) -> None:
        super().__init__()
        self.max_connections = max_connections

    def __setitem__(self, key: Any, engine: Any) -> None:
        config = getattr(engine, "config", None)
        if isinstance(config, RouterConfig) and config.transport is None:
            if self.max_connections is not None and (
                config.max_connections != self.max_connections
            ):
                # Re-initialized in place, not replaced: DSPy makes the call that built the
                # engine with the object it built (a replacement served later calls only).
                sized = dataclasses.replace(config, max_connections=self.max_connections)
                engine.__init__(sized, model_type=engine.model_type)
            _time_connection_waits(engine)
        route_on_loop(engine)
        super().__setitem__(key, engine)


def route_on_loop(engine: Any) -> None:
    """Let a native engine route its calls on the loop once its provider is built.

    DSPy's async lm15 engine routes every call in a worker thread (``asyncio.to_thread``)
    because building a provider may load a credential synchronously. Only the first call
    builds it (the engine keeps it); after that, routing is a few dict lookups, and the hop
    (a thread hand-off and a loop wake-up) is most of its cost. So the first call of each
    engine routes as DSPy does, in the thread, and the later ones on the loop, with the
    engine's own ``_target``, stream guard and closing, in DSPy's order. An engine without
    these internals is left as it is.
    """
    from dspy.clients.engines import lm15_engine

    target = getattr(engine, "_target", None)
    built = getattr(engine, "_providers", None)
    guard = getattr(lm15_engine, "achecked_stream", None)
    closing = getattr(lm15_engine, "aclosing_stream", None)
    if not (
        type(engine) is getattr(lm15_engine, "AsyncLM15Engine", None)
        and callable(target)
        and isinstance(built, dict)
        and callable(guard)
        and callable(closing)
    ):
        return
    threaded_complete, threaded_stream = engine.complete, engine.stream

    async def complete(request: Any) -> Any:
        if not built:
            return await threaded_complete(request)
        provider, routed = target(request)
        return await provider.complete(routed)

    async def stream(request: Any) -> AsyncIterator[Any]:
        if built:
            provider, routed = target(request, streaming=True)
            events = guard(provider.stream(routed), provider=provider.provider)
        else:
            events = threaded_stream(request)
        async with closing(events):
            async for event in events:
                yield event

    engine.complete, engine.stream = complete, stream


def _time_connection_waits(engine: Any) -> None:
    """Time the pool waits of the transport ``engine``'s router builds (lm15 has no hook), and
    read the proxy settings once for it (:func:`_proxies_read_once`).

    The router builds its one transport lazily; the first one it returns gets its pool's
    ``acquire_slot`` (the wait for one of ``max_connections``) wrapped. An lm15 without these
    internals is left as it is: the wait is then simply not reported.
    """
    router = getattr(engine, "router", None)
    shared = getattr(router, "_shared_transport", None)
    if shared is None:
        return

    def shared_transport() -> Any:
        transport = shared()
        if not getattr(transport, "_llm_server_proxies_read", False):
            _proxies_read_once(transport)
        pool = getattr(transport, "_pool", None)
        acquire = getattr(pool, "acquire_slot", None)
        timed = getattr(acquire, "_llm_server_timed", False)
        if acquire is not None and asyncio.iscoroutinefunction(acquire) and not timed:
            pool.acquire_slot = _timed_acquire(acquire)  # type: ignore[union-attr]
        return transport

    router._shared_transport = shared_transport  # type: ignore[union-attr]


def _proxies_read_once(transport: Any) -> None:
    """Read the proxy variables once for ``transport``, when it is first used, as httpx does
    when a client is made.

    lm15's transport reads them (``urllib.request.getproxies()``: every environment variable,
    ~40 us of CPU with a few dozen) before every request it sends. When none is set the first
    time, the transport goes direct from then on without reading them again; when one is set, it
    keeps reading them per request (``NO_PROXY`` and all), as lm15 does. A proxy set later in a
    running process is not seen by a transport already in use (one per engine, and an engine
    per event loop): restart the worker.
    """
    try:
        transport._llm_server_proxies_read = True
    except AttributeError:  # not lm15's transport as this release builds it: left as it is
        return
    explicit: object = getattr(transport, "_proxy", "unknown")
    if getattr(transport, "_trust_env", None) is not True or explicit is not None:
        return  # an explicit proxy, or the environment already ignored
    try:
        proxies = urllib.request.getproxies()
    except Exception:  # e.g. a variable deleted by another thread meanwhile: lm15 reads them
        return  # per request, as before
    if not proxies:
        transport._trust_env = False


def _timed_acquire(acquire: Any) -> Any:
    async def acquire_slot(timeout: float | None = None) -> None:  # noqa: ASYNC109 -- lm15's
        started = time.perf_counter()
        try:
            await acquire(timeout)
        finally:
            scope = current_scope.get()
            if scope is not None:
                scope.connection_wait_s += time.perf_counter() - started
                scope.connection_waits += 1

    acquire_slot._llm_server_timed = True  # type: ignore[attr-defined]
    return acquire_slot
