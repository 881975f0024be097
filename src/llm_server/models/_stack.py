"""The one place where the layers around a model call are composed.

Every model call made through :class:`~llm_server.models.manager.ModelManager` runs as::

    model-call span (telemetry, outermost: one span per logical call; left out when it is off)
      -> the tenant's budgets (reserved before, settled after: once per logical call)
        -> request deadline (cancels everything inside)
          -> fallback chain (primary, then each ``fallbacks:`` model)
            -> per model: retries -> the model's circuit breaker -> one HTTP attempt
               (which takes from the model's rate limit before it is sent)

so each retry is one HTTP request that the breaker sees, and retries, breaker refusals and
fallbacks show up as events on the model-call span. The order is drawn and explained on the
front page of :mod:`llm_server.core.reliability`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace

from llm_server.core.clock import Clock
from llm_server.core.config import FrameworkSettings
from llm_server.core.errors import CircuitOpenError
from llm_server.core.model_config import ModelsConfig
from llm_server.core.opentelemetry_integration import ModelCallInfo, Telemetry
from llm_server.core.protocols import ModelBackend
from llm_server.core.reliability._breaker import CircuitBreaker
from llm_server.core.reliability._breaker_types import BreakerStateStore
from llm_server.core.reliability._budgets import (
    Budget,
    BudgetBackend,
    TenantBudgets,
    UsageCounters,
)
from llm_server.core.reliability._layers import (
    ReliableModel,
    build_reliable_backend,
    current_deadline,
)
from llm_server.core.reliability._rate_limit import LimitCounters, LocalLimitCounters, RateLimiter
from llm_server.core.reliability._retry import RetryPolicy

__all__ = ["ReliabilityStack"]


class ReliabilityStack:
    """Per-model breakers, retry policies and telemetry facts, and their composition.

    Args:
        config: The model configuration (breaker and retry overrides, fallbacks).
        settings: Defaults for breakers, retries and the request deadline.
        telemetry: Where spans, metrics and breaker events go.
        clock: Time source for breakers, retries and deadlines (inject a fake in tests).
        rng: Jitter source for the retries.
        breaker_store: Where breakers keep their state (default: each its own, in memory;
            a fleet's Redis store shares them).
        limit_counters: Where rate limits count (default: this process).
        usage_counters: Where tenants' usage counts (default: this process).
    """

    def __init__(
        self,
        config: ModelsConfig,
        settings: FrameworkSettings,
        *,
        telemetry: Telemetry,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        breaker_store: BreakerStateStore | None = None,
        limit_counters: LimitCounters | None = None,
        usage_counters: UsageCounters | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.deadline_s = settings.request_deadline_s
        self._clock = clock
        self._rng = rng
        self.fallbacks = {mid: tuple(m.fallbacks) for mid, m in config.models.items()}
        self.breakers = {
            mid: CircuitBreaker.from_config(
                mid,
                settings,
                m.circuit_breaker,
                listeners=[telemetry.listener],
                clock=clock,
                store=breaker_store,
                # a probe's fleet permit outlives its longest attempt
                probe_lease_s=(m.timeout_s or settings.model_timeout_s) + 1.0,
            )
            for mid, m in config.models.items()
        }
        counters = limit_counters or LocalLimitCounters(clock=clock)
        self.limiters = {
            mid: RateLimiter(
                mid,
                requests_per_minute=m.rate_limit.requests_per_minute,
                tokens_per_minute=m.rate_limit.tokens_per_minute,
                max_wait_s=m.rate_limit.max_wait_s,
                counters=counters,
                clock=clock,
                deadline=current_deadline,
            )
            for mid, m in config.models.items()
            if m.rate_limit is not None
        }
        self.budgets = TenantBudgets(
            {
                tenant: {
                    period: Budget(limits.requests, limits.tokens, limits.cost_usd)
                    for period, limits in (("day", budget.per_day), ("month", budget.per_month))
                    if limits is not None
                }
                for tenant, budget in config.budgets.items()
            },
            counters=usage_counters,
        )
        self.retries = {
            mid: RetryPolicy.from_config(settings, m.retry) for mid, m in config.models.items()
        }
        self.call_info: dict[str, ModelCallInfo] = {}
        for mid, m in config.models.items():
            temperature = m.additional_params.get("temperature")
            self.call_info[mid] = ModelCallInfo.from_model_name(
                m.model_name,
                api_base=m.api_base,
                max_tokens=m.max_tokens,
                temperature=float(temperature)
                if isinstance(temperature, int | float) and not isinstance(temperature, bool)
                else None,
            )
        telemetry.observe_breakers(self.breakers)

    def refusal(self, model_id: str) -> CircuitOpenError | None:
        """The error a call to ``model_id`` would end with now, when its breaker and every
        fallback's breaker would refuse it (counted as their refusals, which the refusals
        metric reads); else ``None``.

        Costs a dictionary lookup per model while the breakers are closed.
        """
        chain = (model_id, *self.fallbacks[model_id])
        breakers = [self.breakers[mid] for mid in chain]
        if any(breaker.would_admit() for breaker in breakers):
            return None
        errors = [breaker.refuse() for breaker in breakers]  # each breaker counts its refusal
        return errors[0]

    def compose(
        self,
        model_id: str,
        bare: Callable[[str], ModelBackend],
        *,
        program_id: str | None = None,
    ) -> ModelBackend:
        """The backend for ``model_id``; ``bare(mid)`` builds each model's one-attempt backend."""
        chain = [model_id, *self.fallbacks[model_id]]
        models = [ReliableModel(bare(mid), self.breakers[mid], self.retries[mid]) for mid in chain]
        backend = build_reliable_backend(
            models[0], models[1:], deadline_s=self.deadline_s, clock=self._clock, rng=self._rng
        )
        # outermost but for the span: one logical call is one check and one charge
        budgeted = BudgetBackend(backend, self.budgets)
        if not self.telemetry.enabled:  # the span layer would only forward: not built
            return budgeted
        return self.telemetry.instrument(
            budgeted, replace(self.call_info[model_id], program_id=program_id)
        )
