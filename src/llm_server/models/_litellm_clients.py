"""Closing the HTTP clients LiteLLM caches process-wide.

LiteLLM keeps its async HTTP clients in one process-wide cache, one set per event loop, and
never closes the clients of a loop that has ended: when the cache evicts them (200 entries,
or after their time to live) they are left to the garbage collector with their sockets open.
``litellm.close_litellm_async_clients()`` closes every cached async client but leaves it in
the cache, so the next call on the same loop is handed a closed client and fails with
"Cannot send a request, as the client has been closed". :func:`close_litellm_clients` does
both halves: close, then forget what was closed.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["close_litellm_clients"]

logger = logging.getLogger(__name__)


async def close_litellm_clients() -> None:
    """Close LiteLLM's cached async HTTP clients and drop them from its cache.

    Call on the event loop that made the calls, before it ends. Synchronous clients are left
    alone (they belong to no loop and are reused by later synchronous calls). A client closed
    here is rebuilt by LiteLLM on its next call. Never raises: it runs during shutdown.
    """
    import litellm

    try:
        # Public in LiteLLM's docs, but untyped and not re-exported for mypy.
        await litellm.close_litellm_async_clients()  # type: ignore[attr-defined,no-untyped-call]
        cache = getattr(litellm, "in_memory_llm_clients_cache", None)
        entries = getattr(cache, "cache_dict", None)
        if cache is None or not isinstance(entries, dict):
            return
        for key, client in list(entries.items()):
            if _is_closed(client):
                cache.delete_cache(key)
    except Exception:  # closing must not hide the host's own shutdown error
        logger.warning("closing LiteLLM's async clients failed", exc_info=True)


def _is_closed(client: Any) -> bool:
    # The OpenAI SDK clients hold their httpx client as `_client`, LiteLLM's handlers as `client`.
    http = getattr(client, "_client", None)
    if http is None:
        http = getattr(client, "client", None)
    return getattr(http, "is_closed", None) is True
