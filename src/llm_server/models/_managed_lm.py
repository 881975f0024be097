"""The ``dspy.LM`` the manager builds, and the per-request scope a backend runs a program in.

This module imports DSPy at module level; only the model manager imports it, lazily, after
:func:`llm_server._offline.ensure_offline` (``import llm_server`` never reaches it).

Why a subclass: DSPy records every call in up to four shared, unbounded histories, and
``lm.history[-1]`` read after an ``await`` belongs to whichever request finished last. A
:class:`ManagedLM` never stores history; each call's record (response model, finish reason,
messages) goes to the :class:`RequestScope` of the request that made it, carried in a
contextvar, so concurrent requests never see each other's calls.
"""

from __future__ import annotations

from llm_server._offline import ensure_offline

ensure_offline()

import asyncio  # noqa: E402 -- after ensure_offline() on purpose
from collections.abc import Awaitable, Callable, Mapping  # noqa: E402
from contextvars import ContextVar  # noqa: E402
from typing import Any  # noqa: E402

import dspy  # noqa: E402
from dspy.utils.callback import with_callbacks  # noqa: E402
from dspy.utils.exceptions import LMError  # noqa: E402

from llm_server.core.errors import ConfigurationError, ContextWindowExceededError  # noqa: E402
from llm_server.core.model_config import ModelConfig  # noqa: E402
from llm_server.core.pricing import ModelPrice  # noqa: E402
from llm_server.core.reliability._budgets import (  # noqa: E402
    reserve_model_call,
    reserve_model_call_from_thread,
)
from llm_server.core.reliability._rate_limit import Grant, RateLimiter  # noqa: E402
from llm_server.core.tokens import count_message_tokens  # noqa: E402
from llm_server.models._engine import (  # noqa: E402
    ResolvedEngine,
    ResolvedKey,
    normalise_api_base,
)
from llm_server.models._lm_engines import PoolSizedEngines  # noqa: E402
from llm_server.models._refusals import capture_lm15_refusals  # noqa: E402
from llm_server.models._request_scope import (  # noqa: E402
    current_scope,
    entry_messages,
    sync_call,
)

__all__ = ["SHARED_CACHE_SUPPORTED", "ManagedLM", "build_lm"]

# the records of the LM call running in this context (to settle its rate-limit grant)
_call_entries: ContextVar[list[dict[str, Any]] | None] = ContextVar(
    "llm_server_lm_call", default=None
)


def _dspy_execution() -> tuple[Any, Any, Any, Any, Any] | None:
    """DSPy 3.4's per-call steps (prepare, execute, finalize, warnings), if this DSPy has them."""
    try:
        from dspy.clients._deprecation import warn_legacy_lm, warn_openai_messages
        from dspy.clients.execution import aexecute, finalize, prepare
    except ImportError:
        return None
    if not callable(getattr(dspy.LM.acall, "__wrapped__", None)):  # no undecorated acall
        return None
    return prepare, aexecute, finalize, warn_legacy_lm, warn_openai_messages


_EXECUTION = _dspy_execution()


def _call_result_class() -> Any:
    """DSPy 3.4's ``CallResult`` (what a cached record loads into), if this DSPy has it."""
    try:
        from dspy.clients.execution import CallResult
    except ImportError:  # a DSPy without it: no shared cache (the manager refuses the setting)
        return None
    return CallResult


_CALL_RESULT = _call_result_class()
SHARED_CACHE_SUPPORTED = _EXECUTION is not None and _CALL_RESULT is not None
_DSPY_ACALL = dspy.LM.acall  # DSPy's own, callbacks included


def _text_only(prompt: Any, messages: Any, kwargs: Mapping[str, Any]) -> bool:
    """Whether a call carries nothing but text (no media for DSPy to read, no lm15 Request)."""
    if "request" in kwargs or not (prompt is None or isinstance(prompt, str)):
        return False
    if messages is None:
        return True
    return isinstance(messages, list) and all(
        isinstance(message, dict) and isinstance(message.get("content"), str)
        for message in messages
    )


class ManagedLM(dspy.LM):  # type: ignore[misc]  # dspy is untyped
    """A ``dspy.LM`` that reports each call to the current request instead of keeping history.

    It also skips one of DSPy's thread hops: ``dspy.LM.acall`` prepares every call in a worker
    thread (``asyncio.to_thread``) because preparing media may read local files. A text-only
    call reads nothing, and the hop (a thread hand-off, a future and a loop wake-up, ~0.1 ms of
    CPU per call here) buys nothing, so text-only calls are prepared on the loop, with DSPy's
    own steps in DSPy's order; anything else goes through ``dspy.LM.acall`` unchanged. Two more
    hops happen only on an LM's first call, where they may load something (see
    :func:`_plan_in_thread_once` and ``_lm_engines.route_on_loop``).
    """

    if _EXECUTION is not None:

        @with_callbacks  # type: ignore[untyped-decorator]  # dspy is untyped
        async def acall(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
            """``dspy.LM.acall``, preparing text-only calls without the worker-thread hop."""
            # what the call sends, worked out once for the window check and the in-flight record
            outgoing = entry_messages({"messages": messages, "prompt": prompt})
            if self._window is not None:
                self._check_fits(outgoing)
            scope = current_scope.get()
            if scope is not None and scope.max_tokens is not None:  # a re-ask after a cut
                kwargs = {**kwargs, "max_tokens": scope.max_tokens}
            sent = scope.call_started(outgoing) if scope is not None else None
            try:
                # The plain text-only call (no rate limit, no shared cache), the one most
                # requests make: _execute, _admitted and _sent inlined, so no frame of ours
                # but this one is resumed while the call waits for the network.
                if (
                    self._limiter is None
                    and self._shared_cache is None
                    and _EXECUTION
                    and _text_only(prompt, messages, kwargs)
                ):
                    prepare, aexecute, finalize, warn_legacy_lm, warn_openai_messages = _EXECUTION
                    call = prepare(self, prompt, messages, kwargs, asynchronous=True)
                    if not call.managed:
                        warn_legacy_lm()
                    warn_openai_messages(self, messages)
                    await reserve_model_call(lambda: self._estimate(prompt, messages))
                    return finalize(self, call, await aexecute(self, call))
                return await self._execute(prompt, messages, kwargs)
            except asyncio.CancelledError:
                sent = None  # cut after it left: it stays in flight, for the books
                raise
            finally:
                if sent is not None:
                    sent.clear()

        async def _execute(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> Any:
            if _EXECUTION is None or not _text_only(prompt, messages, kwargs):  # (for mypy)
                return await self._admitted(
                    prompt,
                    messages,
                    lambda: _DSPY_ACALL.__wrapped__(self, prompt, messages=messages, **kwargs),
                )
            prepare, aexecute, finalize, warn_legacy_lm, warn_openai_messages = _EXECUTION
            call = prepare(self, prompt, messages, kwargs, asynchronous=True)
            if not call.managed:
                warn_legacy_lm()
            warn_openai_messages(self, messages)
            cache = self._shared_cache
            if cache is None:
                return await self._admitted(
                    prompt, messages, lambda: _sent(self, call, aexecute, finalize)
                )
            # The shared cache is asked first: a hit takes no rate-limit capacity and no budget.
            key = cache.key(call.key(self, True))
            record = await cache.get(key)
            if record is not None and _CALL_RESULT is not None:
                try:
                    return finalize(self, call, _CALL_RESULT.load(record))  # a hit: not billed
                except (KeyError, TypeError, ValueError):
                    pass  # a record this DSPy cannot read: ask the provider
            return await self._admitted(
                prompt,
                messages,
                lambda: _sent(self, call, aexecute, finalize, cache=cache, key=key),
            )

        async def _admitted(
            self, prompt: Any, messages: Any, send: Callable[[], Awaitable[Any]]
        ) -> Any:
            """Send once the tenant's budget holds the call's estimate and the rate limit
            granted it; settle the grant to the reported usage."""
            await reserve_model_call(lambda: self._estimate(prompt, messages))
            limiter = self._limiter
            if limiter is None:
                return await send()
            grant = await limiter.acquire(self._reserve(limiter, prompt, messages))
            entries: list[dict[str, Any]] = []
            token = _call_entries.set(entries)
            try:
                result = await send()
            except BaseException:
                limiter.settle(grant, sent=True, tokens_used=None)  # it may have been billed
                raise
            finally:
                _call_entries.reset(token)
            _settle(limiter, grant, entries)
            return result

    _window: tuple[str, int, int] | None = None  # (model id, context window, max tokens)
    _limiter: RateLimiter | None = None
    _price: ModelPrice | None = None
    _shared_cache: Any = None  # a llm_server.fleet.SharedResponseCache
    _planned = False  # DSPy's capability planning ran once (see _plan_in_thread_once)

    def share_cache(self, cache: Any) -> None:
        """Answer text-only async calls from ``cache`` (a ``SharedResponseCache``) first."""
        self._shared_cache = cache

    def limit_rate(self, limiter: RateLimiter | None) -> None:
        """Take every call's requests and tokens from ``limiter`` before it is sent."""
        self._limiter = limiter

    def price_calls(self, price: ModelPrice | None) -> None:
        """Price each call's estimate (for the tenant's cost budget) at ``price``."""
        self._price = price

    def _estimate(self, prompt: Any, messages: Any) -> tuple[int, float]:
        """The most a call may use: its prompt's tokens, counted here, plus ``max_tokens``;
        and what that costs at the model's price (0 when the price is unknown)."""
        sent = entry_messages({"messages": messages, "prompt": prompt})
        prompt_tokens = count_message_tokens(sent, self.model)
        answer_tokens = self._max_answer_tokens()
        price = self._price
        cost = (
            0.0
            if price is None
            else (
                prompt_tokens * price.input_per_million + answer_tokens * price.output_per_million
            )
            / 1_000_000
        )
        return prompt_tokens + answer_tokens, cost

    def __call__(self, prompt: Any = None, *, messages: Any = None, **kwargs: Any) -> Any:
        """``dspy.LM.__call__`` (sync programs, optimizers), taken from the rate limit first."""
        scope = current_scope.get()
        if scope is None:
            return self._sync_call(prompt, messages, kwargs)
        if scope.max_tokens is not None:  # a re-ask after a cut
            kwargs = {**kwargs, "max_tokens": scope.max_tokens}
        # In a worker thread the request may give up (a deadline) while the call goes on: the
        # call stays in flight, for the books, until its usage is recorded (CallTracker).
        sent = scope.call_started(entry_messages({"messages": messages, "prompt": prompt}))
        token = sync_call.set(sent)
        try:
            return self._sync_call(prompt, messages, kwargs)
        finally:
            sync_call.reset(token)
            with scope.tracker.lock:
                sent.clear()  # it ended (a failure bills nothing; an answer was recorded)

    def _sync_call(self, prompt: Any, messages: Any, kwargs: dict[str, Any]) -> Any:
        reserve_model_call_from_thread(lambda: self._estimate(prompt, messages))
        limiter = self._limiter
        if limiter is None:
            return super().__call__(prompt, messages=messages, **kwargs)
        # a synchronous caller (a sync program in a worker thread, an optimizer) waits here
        grant = limiter.acquire_sync(self._reserve(limiter, prompt, messages))
        entries: list[dict[str, Any]] = []
        token = _call_entries.set(entries)
        try:
            result = super().__call__(prompt, messages=messages, **kwargs)
        except BaseException:
            limiter.settle(grant, sent=True, tokens_used=None)
            raise
        finally:
            _call_entries.reset(token)
        _settle(limiter, grant, entries)
        return result

    def _reserve(self, limiter: RateLimiter, prompt: Any, messages: Any) -> int:
        """Tokens to reserve: the prompt's, counted here, plus ``max_tokens``."""
        if not limiter.counts_tokens:
            return 0
        sent = entry_messages({"messages": messages, "prompt": prompt})
        return count_message_tokens(sent, self.model) + self._max_answer_tokens()

    def _max_answer_tokens(self) -> int:
        """The ``max_tokens`` of this call: a re-ask's raised one, else the model's."""
        scope = current_scope.get()
        if scope is not None and scope.max_tokens is not None:
            return scope.max_tokens
        max_tokens = self.kwargs.get("max_tokens") or self.kwargs.get("max_completion_tokens")
        return int(max_tokens or 0)

    def guard_context_window(self, model_id: str, window: int | None, max_tokens: int) -> None:
        """Refuse, before sending, a prompt that cannot fit ``window`` with ``max_tokens``."""
        self._window = (model_id, window, max_tokens) if window else None

    def _check_fits(self, sent: list[dict[str, Any]]) -> None:
        """Refuse a call whose messages ``sent`` cannot fit the window with max_tokens."""
        assert self._window is not None
        model_id, window, max_tokens = self._window
        room = window - max_tokens
        # A token is at least one character: a prompt with fewer characters than the room
        # fits, and most do; only a long one is counted (offline, like the provider bills).
        chars = sum(len(str(m.get("content", ""))) + 8 for m in sent)
        if chars <= room:
            return
        tokens = count_message_tokens(sent, self.model)
        if tokens > room:
            raise ContextWindowExceededError(
                f"model {model_id!r}: the prompt is {tokens:,} tokens and the answer may take "
                f"max_tokens={max_tokens:,}, more than its context window of {window:,} tokens "
                "(not sent; a fallback model with a larger window is tried if one is "
                "configured)",
                model_id=model_id,
            )

    def size_pool(self, max_connections: int | None) -> None:
        """Give the native engine ``max_connections`` per event loop (``None``: its default),
        and time each call's wait for a connection."""
        self._max_connections = max_connections
        self._engine_store = PoolSizedEngines(max_connections)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)  # copies get a fresh, plain engine store
        self.size_pool(state.get("_max_connections"))

    def update_history(self, entry: dict[str, Any]) -> None:
        """Hand the call's record to the current request scope; store nothing shared."""
        scope = current_scope.get()
        if scope is not None:
            scope.entries.append(entry)
        call = _call_entries.get()
        if call is not None:
            call.append(entry)


def _plan_in_thread_once() -> None:
    """Run DSPy's capability planning in a worker thread on a :class:`ManagedLM`'s first call only.

    Before each adapter call DSPy computes the LM's capability hints (function calling,
    response schema, ...) in a worker thread (``asyncio.to_thread``): the first computation
    may load the model catalog or import LiteLLM. Once it ran, what it reads is loaded and
    the hop is the cost, for hints a plain adapter call never reads: later calls of the LM
    skip it, and an adapter that reads a hint computes it on the loop, as DSPy's synchronous
    path always does. Other LMs keep DSPy's behaviour. A DSPy without this hook is left as it
    is.
    """
    from dspy.clients import capabilities

    threaded = getattr(capabilities, "prepare_async", None)
    if not asyncio.iscoroutinefunction(threaded) or getattr(threaded, "_llm_server", False):
        return

    async def prepare_async(lm: Any) -> None:
        managed = isinstance(lm, ManagedLM)
        if managed and lm._planned:
            return
        await threaded(lm)
        if managed:
            lm._planned = True

    prepare_async._llm_server = True  # type: ignore[attr-defined]
    capabilities.prepare_async = prepare_async


_plan_in_thread_once()


def _price_in_the_manager() -> None:
    """Skip DSPy's own per-call price estimate for a :class:`ManagedLM`'s calls.

    After each call DSPy estimates its cost from its model catalog, in a worker thread
    (resolving the model's route again and reading the catalog: ~0.1-0.2 ms of CPU, which
    also contends with the event loop for the GIL). The manager prices every call itself, from
    the model's YAML price or LiteLLM's map (:mod:`llm_server.core.pricing`), and never reads
    DSPy's estimate, so for its LMs the estimate is not made: their call records carry
    ``cost=None``. The hand-off of that (now empty) job to a worker thread, inside DSPy's
    ``aexecute``, is skipped too (:class:`_AsyncioSkippingPriceHop`). Other LMs keep DSPy's
    behaviour; a DSPy without this step is left as it is.
    """
    from dspy.clients import execution

    priced = getattr(execution, "_price_result", None)
    if not callable(priced) or getattr(priced, "_llm_server", False):
        return

    def _price_result(lm: Any, result: Any, response: Any, provider: Any, request: Any) -> None:
        if not isinstance(lm, ManagedLM):
            priced(lm, result, response, provider, request)

    _price_result._llm_server = True  # type: ignore[attr-defined]
    execution._price_result = _price_result
    legacy = getattr(execution, "_price_legacy", None)  # LiteLLM's engine: parse, then price
    if getattr(execution, "asyncio", None) is asyncio:
        skipped = (_price_result,) if legacy is None else (_price_result, legacy)
        execution.asyncio = _AsyncioSkippingPriceHop(frozenset(skipped))


async def _nothing() -> None:
    return None


class _AsyncioSkippingPriceHop:
    """``asyncio`` as DSPy's execution module sees it, except one job: ``to_thread`` of the
    price estimate for a :class:`ManagedLM`'s call (``_price_result``, empty for it, see
    :func:`_price_in_the_manager`; with LiteLLM's engine ``_price_legacy``, which parses the
    response only to call it) returns at once instead of waking a worker thread.

    That hand-off came after every answer: ~15-20 us of CPU per request in a loaded server
    (the thread's wake-up, and the interpreter lock passed to it and back while the loop
    runs), for a job that does nothing. Every other attribute, ``to_thread`` of any other job
    included, is :mod:`asyncio`'s own, looked up at each use.
    """

    __slots__ = ("_skipped",)

    def __init__(self, skipped: frozenset[Callable[..., None]]) -> None:
        self._skipped = skipped

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    def to_thread(self, func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if func in self._skipped and args and isinstance(args[0], ManagedLM):
            return _nothing()
        return asyncio.to_thread(func, *args, **kwargs)


_price_in_the_manager()
capture_lm15_refusals()


async def _sent(
    lm: ManagedLM,
    call: Any,
    aexecute: Any,
    finalize: Any,
    *,
    cache: Any = None,
    key: str | None = None,
) -> Any:
    """Send a prepared text-only call; queue a fresh answer for the shared cache."""
    result = await aexecute(lm, call)
    if cache is not None and key is not None and not result.cache_hit:
        # DSPy's plain-data record of a native call (a LiteLLM response is not JSON: the
        # cache skips it)
        cache.put(key, result.dump() if result.responses else result.raw)
    return finalize(lm, call, result)


def _settle(limiter: RateLimiter, grant: Grant, entries: list[dict[str, Any]]) -> None:
    """Settle a finished call's grant to the usage the provider reported."""
    usage = entries[-1].get("usage") if entries else None
    total = usage.get("total_tokens") if isinstance(usage, Mapping) else None
    if isinstance(usage, Mapping) and not usage:
        limiter.settle(grant, sent=False, tokens_used=0)  # a cache hit: nothing was sent
    else:
        limiter.settle(grant, sent=True, tokens_used=total if isinstance(total, int) else None)


def _native_possible(probe: dspy.LM) -> bool:
    try:
        from dspy.clients.backend_selection import select_backend
    except ImportError:  # a DSPy without this module: keep DSPy's own choice ("auto")
        return True
    try:
        return bool(select_backend(probe).native)
    except Exception:
        return False


def build_lm(
    model_id: str,
    config: ModelConfig,
    *,
    engine: str,
    key: ResolvedKey,
    timeout_s: float,
    context_window: int | None = None,
) -> tuple[ManagedLM, ResolvedEngine]:
    """Build ``model_id``'s LM with the engine pinned, cache as configured and retries off.

    ``engine="auto"`` resolves, once, to DSPy's native lm15 engine when it can serve the model
    with these settings and to LiteLLM otherwise; the LM is then built with that engine named
    explicitly, so it cannot drift per call (DSPy's ``auto`` switches on ambient variables).

    Raises:
        ConfigurationError: DSPy refused the model's settings.
    """
    options: dict[str, Any] = {
        **config.additional_params,
        "max_tokens": config.max_tokens,
        "cache": config.cache,
        "num_retries": 0,
        "timeout": timeout_s,
    }
    if key.value is not None:
        options["api_key"] = key.value
    try:
        resolved: ResolvedEngine
        if engine == "litellm":
            resolved = "litellm"
        else:
            base = normalise_api_base(config.provider, config.api_base, "lm15")
            probe = dspy.LM(
                config.model_name, engine="auto", **options, **({"api_base": base} if base else {})
            )
            resolved = "lm15" if _native_possible(probe) else "litellm"
        base = normalise_api_base(config.provider, config.api_base, resolved)
        if base is not None:
            options["api_base"] = base
        if resolved == "litellm" and config.max_connections is not None:
            raise ConfigurationError(
                f"model {model_id!r} ({config.model_name}): max_connections applies to DSPy's "
                "native engine, and this model runs on LiteLLM (its own client pool); remove "
                "the key or use a provider the native engine serves"
            )
        lm = ManagedLM(config.model_name, engine=resolved, **options)
        lm.size_pool(config.max_connections)
        lm.guard_context_window(model_id, context_window, config.max_tokens)
    except (ValueError, TypeError, LMError) as exc:
        raise ConfigurationError(
            f"model {model_id!r} ({config.model_name}): DSPy refused its settings: {exc}"
        ) from exc
    return lm, resolved
