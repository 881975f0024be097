"""The program manager's public canary methods (mixed into ``ProgramManager``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llm_server.programs._canary import Canary
from llm_server.programs._canary_control import CanaryController, Choice
from llm_server.programs._canary_guard import CanaryGuard
from llm_server.programs._version_stats import VersionStats

__all__ = ["CanaryMethods"]


class CanaryMethods:
    """The program manager's canary methods (mixed into ``ProgramManager``)."""

    _canary_control: CanaryController

    def start_canary(
        self,
        program_id: str,
        version: str,
        *,
        weight: float = 0.1,
        sticky: str = "request",
        guard: CanaryGuard | None = None,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Canary:
        """Serve ``version`` to ``weight`` of the program's traffic, next to the served one.

        Keys (see ``sticky``) are split by a hash, the same on every replica; requests
        already running finish on their version. With a shared storage (PostgreSQL) every
        replica follows within a second; otherwise only this process does. With ``guard``
        the canary is judged continuously and rolled back (or promoted) on its own.

        Args:
            program_id: A registered program.
            version: A stored version other than the served one.
            weight: The canary's share of keys, between 0 and 1.
            sticky: ``"request"``, ``"tenant"`` or ``"header:<Name>"`` (e.g.
                ``"header:X-Session-Id"``): what keeps a caller on one side.
            guard: Thresholds for the automatic decision (``None``: end it by hand).
            actor: Who starts it (recorded).
            reason: Why (recorded).

        Raises:
            ProgramNotFoundError: Unknown program or version.
            ProgramError: A canary is running already, the version is the served one, or
                ``weight``/``sticky`` are not valid.
        """
        return self._canary_control.start(
            program_id,
            version,
            weight=weight,
            sticky=sticky,
            guard=guard,
            actor=actor,
            reason=reason,
        )

    def end_canary(
        self,
        program_id: str,
        outcome: str = "rollback",
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> Canary:
        """End the running canary: ``"promote"`` releases its version (recorded as a
        release), ``"rollback"`` serves the stable version to everyone again.

        Raises:
            ProgramError: No canary is running, or ``outcome`` is neither.
        """
        return self._canary_control.end(program_id, outcome=outcome, actor=actor, reason=reason)

    def canaries(self, program_id: str | None = None) -> list[Canary]:
        """Every canary (of ``program_id``), oldest first: who started and ended it, when,
        why, and the outcome."""
        return list(self._canary_control.storage.canaries(program_id))

    def canary_figures(self, program_id: str) -> dict[str, Any]:
        """Live figures of the stable and the canary version side by side: requests, errors
        by type, parse failures, p50/p95/p99 latency, tokens and cost per request (the
        fleet's with Redis, else this process's), and, for a program that captures its
        traffic, ``feedback`` per kind (``human``, ``judge``: count, scored, mean score) since
        the canary started (since ever without one). Blocking I/O with capture on (one query
        per kind): call it from a worker thread in async code."""
        return self._canary_control.figures(program_id)

    def on_canary_end(self, callback: Callable[[Canary], None]) -> None:
        """Call ``callback(canary)`` when this process ends a canary (by hand or the guard)."""
        self._canary_control.add_listener(callback)

    @property
    def version_stats(self) -> VersionStats:
        """Live figures per version (program endpoints record every request here)."""
        return self._canary_control.stats

    def close(self) -> None:
        """Stop following and judging canaries (the lifespan calls it at shutdown)."""
        self._canary_control.close()

    def _canary_choice(self, program_id: str, key_of: Callable[[str], str | None]) -> Choice:
        return self._canary_control.choose(program_id, key_of)
