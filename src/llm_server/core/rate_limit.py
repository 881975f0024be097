"""Request and token limits per model, per process or fleet-wide.

Set in a model's YAML::

    models:
      gpt-4o-mini:
        rate_limit:
          requests_per_minute: 500
          tokens_per_minute: 200000
          max_wait_s: 2   # wait for capacity up to this (never past the request deadline)

Every call to the provider first takes one request and its tokens (the prompt, counted here,
plus ``max_tokens``); afterwards the tokens are settled to the provider's reported usage. A
call that cannot get capacity in time is refused with
:class:`~llm_server.core.errors.RateLimitExceededError` (HTTP 429 with ``Retry-After``) and
never sent. With ``LLM_SERVER_REDIS_URL`` the counters are the fleet's (:mod:`llm_server.fleet`).
"""

from llm_server.core.reliability._rate_limit import (
    WINDOW_S,
    Grant,
    LimitCounters,
    LocalLimitCounters,
    RateLimiter,
    wait_for,
)

__all__ = ["WINDOW_S", "Grant", "LimitCounters", "LocalLimitCounters", "RateLimiter", "wait_for"]
