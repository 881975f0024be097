"""Closing the HTTP clients LiteLLM caches process-wide.

LiteLLM keeps its async HTTP clients in one process-wide cache, one set per event loop, and
never closes the clients of a loop that has ended: when the cache evicts them (200 entries,
or after their time to live) they are left to the garbage collector with their sockets open.
``litellm.close_litellm_async_clients()`` closes every cached async client but leaves it in
the cache, so the next call on the same loop is handed a closed client and fails with
"Cannot send a request, as the client has been closed". :func:`close_litellm_clients` does
both halves: close, then forget what was closed.

One client lives outside that cache: ``litellm.module_level_aclient``, which some providers'
streamed calls use (Anthropic's, for one). LiteLLM builds it on first use and keeps it as a
module attribute for the life of the process, so its connections to a loop that has ended
stayed open until the garbage collector found them. It is closed and forgotten the same way
(LiteLLM builds a new one on its next use).
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
        if cache is not None and isinstance(entries, dict):
            for key, client in list(entries.items()):
                if _is_closed(client):
                    cache.delete_cache(key)
        # read from the module's namespace: getattr would build one just to close it
        module_level = vars(litellm).get("module_level_aclient")
        if module_level is not None:
            await _close_handler(module_level)
            if (
                _is_closed(module_level)
                and vars(litellm).get("module_level_aclient") is module_level
            ):
                delattr(litellm, "module_level_aclient")  # LiteLLM rebuilds it when next used
    except Exception:  # closing must not hide the host's own shutdown error
        logger.warning("closing LiteLLM's async clients failed", exc_info=True)


async def _close_handler(handler: Any) -> None:
    """Close one of LiteLLM's async HTTP handlers: its transport (aiohttp), then its client."""
    http = getattr(handler, "_client", None)
    if http is None:
        http = getattr(handler, "client", None)
    transport = getattr(http, "_transport", None)
    close_transport = getattr(transport, "aclose", None)
    if close_transport is not None:
        await close_transport()
    if http is not None and getattr(http, "is_closed", True) is False:
        await http.aclose()


def _is_closed(client: Any) -> bool:
    # The OpenAI SDK clients hold their httpx client as `_client`, LiteLLM's handlers as `client`.
    http = getattr(client, "_client", None)
    if http is None:
        http = getattr(client, "client", None)
    return getattr(http, "is_closed", None) is True
