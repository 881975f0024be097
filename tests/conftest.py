"""Shared test configuration."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from llm_server._offline import ensure_offline

ensure_offline()


@pytest.fixture
def anyio_backend() -> str:
    """Run anyio tests on asyncio only (DSPy and our code target asyncio)."""
    return "asyncio"


@pytest.fixture
async def closing_lms() -> AsyncIterator[Callable[[Any], Any]]:
    """Register ``dspy.LM``s to be closed on the test's own event loop when it ends.

    DSPy keeps an async connection pool per event loop, and LiteLLM caches its async clients
    process-wide per loop: left open, their sockets are collected during some later test and
    fail it with an "unclosed socket" ResourceWarning. Use: ``lm = closing_lms(dspy.LM(...))``.
    """
    lms: list[Any] = []

    def register(lm: Any) -> Any:
        lms.append(lm)
        return lm

    yield register
    for lm in lms:
        await lm.aclose()
    if "litellm" in sys.modules:  # never pay LiteLLM's import just to close nothing
        from llm_server.models._litellm_clients import close_litellm_clients

        await close_litellm_clients()


@pytest.fixture(scope="session", autouse=True)
def _close_litellm_sync_clients() -> Iterator[None]:
    """Close LiteLLM's cached synchronous HTTP clients when the session ends.

    LiteLLM keeps them process-wide and reuses them across tests (``ModelManager.aclose``
    leaves them to later synchronous calls); left open, their sockets are reported as
    "unclosed socket" at interpreter exit.
    """
    yield
    if "litellm" not in sys.modules:
        return
    import httpx
    import litellm

    for client in list(litellm.in_memory_llm_clients_cache.cache_dict.values()):
        http = getattr(client, "_client", None) or getattr(client, "client", None)
        if isinstance(http, httpx.Client):
            http.close()
