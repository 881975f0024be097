"""The reliability wrappers and their composition (private: public at
:mod:`llm_server.core.reliability`, whose front page draws the order)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

from llm_server.core.clock import SYSTEM_CLOCK, Clock
from llm_server.core.errors import (
    CircuitOpenError,
    ConfigurationError,
    ContextWindowExceededError,
    DeadlineExceededError,
    RateLimitExceededError,
)
from llm_server.core.model_interfaces import ModelOutput
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._breaker import CircuitBreaker
from llm_server.core.reliability._breaker_types import BreakerState
from llm_server.core.reliability._retry import RetryPolicy, is_retryable, retry_call
from llm_server.core.reliability._wrapper import BackendWrapper
from llm_server.core.telemetry._observation import (
    notify_breaker_refusal,
    notify_fallback,
    notify_retry,
)

__all__ = [
    "CircuitBreakerBackend",
    "DeadlineBackend",
    "FallbackBackend",
    "ReliableModel",
    "RetryingBackend",
    "build_reliable_backend",
    "current_deadline",
    "should_fall_back",
]

_log = logging.getLogger(__name__)
_deadline: ContextVar[float | None] = ContextVar("llm_server_deadline", default=None)


def current_deadline() -> float | None:
    """The clock time by which the current model call must finish, if a deadline is set.

    Set by :class:`DeadlineBackend` for the duration of its call (in its clock's time,
    ``time.monotonic`` by default); nested deadlines keep the earliest.
    """
    return _deadline.get()


class CircuitBreakerBackend(BackendWrapper):
    """Calls the backend through a circuit breaker.

    Args:
        backend: The model's backend.
        breaker: The model's breaker (share one breaker per model).

    Raises:
        CircuitOpenError: From :meth:`predict`, when the breaker refuses the call (the
            request's observers are told first, see
            :meth:`~llm_server.core.telemetry.RequestObserver.on_breaker_refusal`).
    """

    def __init__(self, backend: ModelBackend, breaker: CircuitBreaker) -> None:
        super().__init__(backend)
        self.breaker = breaker

    async def predict(self, input: Any) -> ModelOutput:
        """Run one model call, if the breaker allows it."""
        # CircuitBreaker.call() inlined (admit, the call, settle): one coroutine frame less
        # on the path every request takes, resumed each time the call waits for the network.
        breaker = self.breaker
        try:
            ticket = breaker.admit()
        except CircuitOpenError as exc:
            if exc.breaker == breaker.name:
                notify_breaker_refusal(self.model_id, exc.retry_after_s)
            raise
        try:
            output = await self._backend.predict(input)
        except BaseException as exc:
            breaker.settle(ticket, exc)
            if isinstance(exc, CircuitOpenError) and exc.breaker == breaker.name:
                notify_breaker_refusal(self.model_id, exc.retry_after_s)  # refused here
            raise
        breaker.settle(ticket, None)
        return output


class RetryingBackend(BackendWrapper):
    """Retries retryable errors by a :class:`~llm_server.core.reliability.RetryPolicy`.

    The output's ``attempts`` counts every attempt and ``latency_ms`` includes the backoffs.

    Args:
        backend: The backend to call (normally a :class:`CircuitBreakerBackend`).
        policy: Attempts and backoffs.
        breaker: When given, retries stop as soon as this breaker is open.
        clock: Time source and sleep.
        rng: Jitter source.

    Each retry is reported to the request's observers
    (:meth:`~llm_server.core.telemetry.RequestObserver.on_retry`).
    """

    def __init__(
        self,
        backend: ModelBackend,
        policy: RetryPolicy,
        *,
        breaker: CircuitBreaker | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(backend)
        self.policy = policy
        self._breaker = breaker
        self._clock = clock or SYSTEM_CLOCK
        self._rng = rng

    async def predict(self, input: Any) -> ModelOutput:
        """Run the call, retrying by the policy."""
        start = self._clock.monotonic()
        # The first attempt is made here, without retry_call's closure and frames: it is the
        # only one on the success path, which every request takes.
        try:
            return await self._backend.predict(input)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            first_error = exc
        try:
            return await self._retry(input, first_error, start)
        finally:  # a failed retry's traceback holds this frame: no cycle through the error
            del first_error

    async def _retry(self, input: Any, first_error: Exception, start: float) -> ModelOutput:
        attempts = 1
        errors = [first_error]  # handed over: this frame keeps no reference (see retry_call)
        del first_error

        async def attempt() -> ModelOutput:
            nonlocal attempts
            attempts += 1
            return await self._backend.predict(input)

        output = await retry_call(
            attempt,
            policy=self.policy,
            clock=self._clock,
            rng=self._rng,
            deadline=_deadline.get(),
            should_stop=self._breaker_open if self._breaker is not None else None,
            on_retry=self._on_retry,
            first_error=errors.pop(),
        )
        latency_ms = (self._clock.monotonic() - start) * 1000.0
        return replace(output, attempts=output.attempts + attempts - 1, latency_ms=latency_ms)

    def _breaker_open(self) -> bool:
        breaker = self._breaker
        return breaker is not None and breaker.state in (
            BreakerState.OPEN,
            BreakerState.FORCED_OPEN,
        )

    def _on_retry(self, attempt: int, error: BaseException, delay_s: float) -> None:
        notify_retry(self.model_id, attempt, error, delay_s)


def should_fall_back(error: BaseException) -> bool:
    """The default fallback rule: the breaker refused, a retryable error remained, the
    model's own ``rate_limit:`` had no capacity in time, or the prompt does not fit the
    model's context window (a fallback may have a larger one)."""
    return isinstance(
        error, CircuitOpenError | ContextWindowExceededError | RateLimitExceededError
    ) or is_retryable(error)


class FallbackBackend(BackendWrapper):
    """Tries the primary, then each fallback in order, while errors allow it.

    A fallback is tried when the previous backend raised an error ``fall_back_on`` accepts
    (by default :func:`should_fall_back`); other errors propagate at once. The answering
    output keeps its own ``model_id``; when a fallback answered, its ``metadata`` gains
    ``"fallback_from"``: the model ids that failed first, in order. When every backend fails,
    the last error propagates.

    Args:
        primary: The model asked first; the wrapper takes its ``model_id``.
        fallbacks: The models to try next, in order.
        fall_back_on: Which errors move on to the next backend.

    Each move to the next backend is logged and reported to the request's observers
    (:meth:`~llm_server.core.telemetry.RequestObserver.on_fallback`).
    """

    def __init__(
        self,
        primary: ModelBackend,
        fallbacks: Sequence[ModelBackend],
        *,
        fall_back_on: Callable[[BaseException], bool] = should_fall_back,
    ) -> None:
        super().__init__(primary)
        self.fallbacks = tuple(fallbacks)
        self._fall_back_on = fall_back_on

    async def predict(self, input: Any) -> ModelOutput:
        """Ask each backend in turn until one answers."""
        chain = (self._backend, *self.fallbacks)
        failed: list[str] = []
        for index, backend in enumerate(chain):
            try:
                output = await backend.predict(input)
            except Exception as exc:
                if index + 1 == len(chain) or not self._fall_back_on(exc):
                    raise
                failed.append(backend.model_id)
                next_id = chain[index + 1].model_id
                _log.warning(
                    "model %r failed (%s); falling back to %r",
                    backend.model_id,
                    type(exc).__name__,
                    next_id,
                )
                notify_fallback(backend.model_id, next_id, exc)
                continue
            if failed:
                output = replace(output, metadata={**output.metadata, "fallback_from": failed})
            return output
        raise AssertionError("unreachable: the chain is never empty")


class DeadlineBackend(BackendWrapper):
    """Bounds the whole call, retries and fallbacks included, by ``deadline_s``.

    The inner call is really cancelled (``asyncio.timeout``) when the deadline passes, and
    the deadline is published to inner wrappers through :func:`current_deadline`.

    Args:
        backend: The backend to bound.
        deadline_s: Seconds the call may take.
        clock: Time source for :func:`current_deadline`.

    Raises:
        DeadlineExceededError: From :meth:`predict`, when the deadline passed.
    """

    def __init__(
        self, backend: ModelBackend, deadline_s: float, *, clock: Clock | None = None
    ) -> None:
        super().__init__(backend)
        if not deadline_s > 0:
            raise ConfigurationError(f"deadline_s must be > 0 (got {deadline_s!r})")
        self.deadline_s = deadline_s
        self._clock = clock or SYSTEM_CLOCK

    async def predict(self, input: Any) -> ModelOutput:
        """Run the call within the deadline."""
        now = self._clock.monotonic()
        outer = _deadline.get()
        deadline = now + self.deadline_s if outer is None else min(outer, now + self.deadline_s)
        token = _deadline.set(deadline)
        scope = asyncio.timeout(max(0.0, deadline - now))
        try:
            async with scope:
                return await self._backend.predict(input)
        except TimeoutError as exc:
            if not scope.expired():
                raise  # a TimeoutError of the call itself, not our deadline
            raise DeadlineExceededError(
                f"model {self.model_id!r} did not answer within the "
                f"{self.deadline_s:g}s request deadline",
                deadline_s=self.deadline_s,
            ) from exc
        finally:
            _deadline.reset(token)


@dataclass(frozen=True, slots=True)
class ReliableModel:
    """One model of a reliable chain: its backend, breaker and retry policy.

    Attributes:
        backend: The model's plain backend (one HTTP request per call).
        breaker: The model's breaker, shared by every chain that uses the model.
        retry: The model's retry policy (``None``: no retries).
    """

    backend: ModelBackend
    breaker: CircuitBreaker | None = None
    retry: RetryPolicy | None = None


def build_reliable_backend(
    primary: ReliableModel,
    fallbacks: Sequence[ReliableModel] = (),
    *,
    deadline_s: float | None = None,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> ModelBackend:
    """Compose deadline -> fallback -> [per model: retries -> breaker -> call].

    Args:
        primary: The model asked first.
        fallbacks: Models to try, in order, when the primary is open or exhausted.
        deadline_s: Overall deadline of one call (``None``: none).
        clock: Time source and sleep for every layer.
        rng: Jitter source for the retries.
    """

    def guarded(model: ReliableModel) -> ModelBackend:
        backend = model.backend
        if model.breaker is not None:
            backend = CircuitBreakerBackend(backend, model.breaker)
        if model.retry is not None and model.retry.max_attempts > 1:
            backend = RetryingBackend(
                backend, model.retry, breaker=model.breaker, clock=clock, rng=rng
            )
        return backend

    backend = guarded(primary)
    if fallbacks:
        backend = FallbackBackend(backend, [guarded(m) for m in fallbacks])
    if deadline_s is not None:
        backend = DeadlineBackend(backend, deadline_s, clock=clock)
    return backend
