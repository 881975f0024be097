"""What a program endpoint does for canaries: pick the version, count the outcome.

The version is picked once, when the request starts (so a request in flight finishes on the
version it started on); its figures are counted once, when it ends, with no I/O (the fleet's
sync thread writes them). While a canary of the program runs, the envelope's ``program``
block carries ``canary: true`` or ``false``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

from fastapi import Request

from llm_server.core.reliability._budgets import current_tenant

__all__ = ["Picked", "count_outcome", "pick_version"]


class Picked:
    """The version a request runs (``metadata``), and what to count it under."""

    __slots__ = ("canary", "metadata", "scope", "started")

    def __init__(self, metadata: Any, *, canary: bool | None, scope: str) -> None:
        self.metadata = metadata
        self.canary = canary
        """``None`` outside a canary (the envelope then says nothing about canaries)."""
        self.scope = scope
        self.started = time.perf_counter()

    def program_block(self, block: dict[str, Any]) -> dict[str, Any]:
        """The envelope's program block, with ``canary`` while a canary runs."""
        return block if self.canary is None else {**block, "canary": self.canary}


def _key_of(request: Request | None) -> Callable[[str], str | None]:
    def key_of(sticky: str) -> str:
        key: str | None = None
        if sticky == "tenant":
            key = current_tenant()
        elif sticky.startswith("header:") and request is not None:
            key = request.headers.get(sticky[7:])
        return key or secrets.token_hex(8)  # per request (or no key to stick by)

    return key_of


def pick_version(pm: Any, program_id: str, request: Request | None) -> Picked:
    """The version this request runs: the canary's or the served one.

    Without an HTTP ``request`` (an MCP tool call), a canary sticky by a header splits per
    call.
    """
    choose = getattr(pm, "_canary_choice", None)
    if choose is None:  # a host's own program manager without canaries
        return Picked(pm.registry.get_program_metadata(program_id), canary=None, scope="")
    choice = choose(program_id, _key_of(request))
    return Picked(
        choice.metadata, canary=choice.canary if choice.scope else None, scope=choice.scope
    )


def count_outcome(
    pm: Any, program_id: str, picked: Picked, error: BaseException | None, metrics: Any
) -> None:
    """Count the request in the version's live figures (never raises into the request)."""
    stats = getattr(pm, "version_stats", None)
    if stats is None:
        return
    try:
        usage = metrics.usage()
        stats.record(
            program_id,
            picked.metadata.version,
            scope=picked.scope,
            canary=bool(picked.canary),
            latency_s=time.perf_counter() - picked.started,
            error=error,
            tokens=usage.total_tokens if usage is not None else None,
            cost_usd=metrics.cost_usd(),
        )
    except Exception:  # figures never break a request
        return
