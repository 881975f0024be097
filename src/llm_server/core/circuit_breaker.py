"""A circuit breaker for async (and sync) calls.

::

    @CircuitBreaker(failure_threshold=5, reset_timeout=60)
    async def call_provider(prompt: str) -> str: ...

    breaker = CircuitBreaker(name="gpt-4o-mini", failure_rate_threshold=0.5, window_size=20)
    answer = await breaker.call(call_provider, "hi")
    async with breaker:
        answer = await call_provider("hi")

States: ``closed`` (calls pass, outcomes counted) -> ``open`` (calls refused with
:class:`~llm_server.core.errors.CircuitOpenError` for ``reset_timeout`` seconds) ->
``half_open`` (up to ``half_open_max_calls`` probes at once; callers beyond them are refused at
once; ``half_open_max_calls`` successful probes close the breaker, one failed probe re-opens
it). ``force_open()``, ``disable()`` and ``reset()`` override the state by hand.

Design points (where pybreaker/aiobreaker fall short):

- no lock is held while the guarded call runs: a permit is taken and returned in two short,
  synchronous critical sections (a ``threading.Lock``, because sync functions may be guarded
  from worker threads);
- a probe that is cancelled, or ends with an ignored error, gives its permit back, so the
  breaker cannot get stuck half-open; an outcome of a call started before a transition is not
  counted against the new state;
- errors that say nothing about the provider's health (bad requests, auth errors, cancellation)
  count as neither failure nor success and do not reset the consecutive-failure count.
"""

from llm_server.core.reliability._breaker import CircuitBreaker
from llm_server.core.reliability._breaker_types import (
    BreakerListener,
    BreakerRecord,
    BreakerSnapshot,
    BreakerState,
    BreakerStateStore,
    CallOutcome,
    FleetPolicy,
    ForcedState,
    InMemoryBreakerStore,
    SharedBreakerStore,
    is_transient_failure,
)

__all__ = [
    "BreakerListener",
    "BreakerRecord",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStateStore",
    "CallOutcome",
    "CircuitBreaker",
    "FleetPolicy",
    "ForcedState",
    "InMemoryBreakerStore",
    "SharedBreakerStore",
    "is_transient_failure",
]
