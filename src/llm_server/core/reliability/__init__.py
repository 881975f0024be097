"""Reliability: what stands between a request and one HTTP attempt to a model.

Every layer is a :class:`~llm_server.core.protocols.ModelBackend` around a ``ModelBackend``
(a :class:`BackendWrapper`), and :func:`build_reliable_backend` composes them in one visible
order. :meth:`ModelManager.reliable_backend
<llm_server.models.manager.ModelManager.reliable_backend>` adds the telemetry span outside::

    InstrumentedBackend                 model-call span; attaches the telemetry observer
      BudgetBackend                     the tenant's budgets: reserved before, settled after
        DeadlineBackend                 the request deadline; really cancels the call
          FallbackBackend               primary, then each ``fallbacks:`` model in turn
            RetryingBackend (per model) backoff with full jitter; stops if the breaker opens
              CircuitBreakerBackend     the model's breaker sees every single attempt
                DSPyBackend             one HTTP request (DSPy/LiteLLM retries switched off),
                                        each taken from the model's rate_limit first

So the breaker counts each attempt, retries never hammer an open breaker, a fallback is tried
only after the primary's retries ran out (or its breaker refused), and the deadline bounds
everything, sleeps included: the retry loop reads it (:func:`current_deadline`) and does not
start an attempt that could not finish in time. Retries, fallbacks and breaker refusals are
reported to the request's observers (:class:`~llm_server.core.telemetry.RequestObserver`).

Its modules (private; the names are public here or at
:mod:`llm_server.core.circuit_breaker`):

- ``_wrapper``: :class:`BackendWrapper`, the base of every layer;
- ``_layers``: the four wrappers, :class:`ReliableModel` and :func:`build_reliable_backend`;
- ``_retry``: :class:`RetryPolicy` and the one retry loop;
- ``_breaker``, ``_breaker_machine``, ``_breaker_types``, ``_breaker_window``: the circuit
  breaker (public API, state machine, values and store protocols, sliding windows);
- ``_rate_limit``: :class:`~llm_server.core.rate_limit.RateLimiter` (a model's
  ``rate_limit:``) and its counters;
- ``_budgets``: tenants' budgets and :class:`~llm_server.core.budgets.BudgetBackend`.
"""

from llm_server.core.reliability._layers import (
    CircuitBreakerBackend,
    DeadlineBackend,
    FallbackBackend,
    ReliableModel,
    RetryingBackend,
    build_reliable_backend,
    current_deadline,
    should_fall_back,
)
from llm_server.core.reliability._retry import RetryPolicy, is_retryable
from llm_server.core.reliability._wrapper import BackendWrapper

__all__ = [
    "BackendWrapper",
    "CircuitBreakerBackend",
    "DeadlineBackend",
    "FallbackBackend",
    "ReliableModel",
    "RetryPolicy",
    "RetryingBackend",
    "build_reliable_backend",
    "current_deadline",
    "is_retryable",
    "should_fall_back",
]
