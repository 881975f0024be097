"""Spending and usage budgets per tenant (requests, tokens, cost per UTC day or month).

In the model YAML::

    budgets:
      "*":                               # every tenant without a budget of its own
        per_day: {requests: 1000, cost_usd: 5}
      acme:
        per_day: {cost_usd: 50}
        per_month: {cost_usd: 1000, tokens: 50000000}

or in code, ``manager.budgets.set_budget("acme", "day", Budget(cost_usd=50))``. The host says
who the caller is, per request: ``app = FastAPI(dependencies=[Depends(tenant_header())])``
(the ``X-Tenant-ID`` header), or :func:`set_tenant` / :func:`tenant_scope` in its own code. A
tenant over budget gets :class:`~llm_server.core.errors.BudgetExceededError`: HTTP 429
``budget_exceeded`` with ``Retry-After`` until the period renews. With
``LLM_SERVER_REDIS_URL`` the usage is the fleet's.
"""

from llm_server.core.reliability._budgets import (
    ANY_TENANT,
    Budget,
    BudgetBackend,
    LocalUsageCounters,
    Period,
    TenantBudgets,
    Usage,
    UsageCounters,
    current_tenant,
    set_tenant,
    tenant_scope,
)

__all__ = [
    "ANY_TENANT",
    "Budget",
    "BudgetBackend",
    "LocalUsageCounters",
    "Period",
    "TenantBudgets",
    "Usage",
    "UsageCounters",
    "current_tenant",
    "set_tenant",
    "tenant_scope",
]
