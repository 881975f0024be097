"""Releases: which version each program serves, recorded by the storage or by this process.

A storage that records releases itself and tells every process about them implements
:class:`ReleasingStorage` (PostgreSQL). For any other storage, :class:`LocalReleases` keeps
the history in memory, for this process alone. Both use one rule for rollbacks
(:func:`~llm_server.models._versioning.release_stack`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from llm_server.core.errors import ProgramError
from llm_server.core.protocols import StoredProgram
from llm_server.models._versioning import release_stack

__all__ = ["LocalReleases", "ReleasingStorage"]


@runtime_checkable
class ReleasingStorage(Protocol):
    """A storage adapter that also records releases and tells every process about them
    (:class:`~llm_server.postgres.PostgresStorageAdapter`)."""

    def promote(
        self,
        program_id: str,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        action: str = "promote",
        served_before: str | None = None,
    ) -> Mapping[str, Any]:
        """Record a release; every watching process serves ``version`` soon after.

        ``served_before`` is recorded first when the program was never released."""
        ...

    def rollback(
        self,
        program_id: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
        check: Callable[[str], object] | None = None,
    ) -> Mapping[str, Any]:
        """Record a release of the version released before the current one, computed and
        written atomically (``check`` is called with it first); raise
        :class:`~llm_server.core.errors.ProgramError` when there is none."""
        ...

    def releases(self, program_id: str) -> Sequence[Mapping[str, Any]]:
        """Every release of the program, oldest first."""
        ...

    def released_version(self, program_id: str) -> str | None:
        """The version released last, if any."""
        ...

    def watch(self, on_release: Callable[[str, str], None], *, interval_s: float = 1.0) -> None:
        """Call ``on_release(program_id, version)`` with what is released: on every
        announcement and every ``interval_s``, again after the callback raised."""
        ...


class LocalReleases:
    """The release history of this process's programs, in memory (thread-safe).

    Args:
        clock: Returns the current time (UTC) for ``released_at``.
    """

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._history: dict[str, list[dict[str, Any]]] = {}

    def history(self, program_id: str) -> list[dict[str, Any]]:
        """Every promotion and rollback of the program, oldest first."""
        with self._lock:
            return list(self._history.get(program_id, []))

    def promote(
        self,
        program_id: str,
        version: str,
        *,
        serving: str,
        actor: str | None,
        reason: str | None,
        apply: Callable[[], object],
    ) -> None:
        """Record a promotion (and, before the first one, ``serving``), then ``apply()`` it."""
        with self._lock:
            history = self._history.setdefault(program_id, [])
            if not history and serving != version:
                note = "served before the first release"
                history.append(self._release(program_id, serving, actor, note, "promote"))
            history.append(self._release(program_id, version, actor, reason, "promote"))
            apply()

    def rollback(
        self,
        program_id: str,
        *,
        actor: str | None,
        reason: str | None,
        apply: Callable[[str], StoredProgram],
    ) -> StoredProgram:
        """``apply(version)`` the version released before the current one, and record it.

        Raises:
            ProgramError: Nothing was released before the current version.
        """
        with self._lock:
            history = self._history.setdefault(program_id, [])
            stack = release_stack(history)
            if len(stack) < 2:
                raise ProgramError(
                    f"program {program_id!r}: nothing to roll back to (releases: "
                    f"{', '.join(stack) or 'none'})"
                )
            stored = apply(stack[-2])
            history.append(self._release(program_id, stack[-2], actor, reason, "rollback"))
            return stored

    def _release(
        self, program_id: str, version: str, actor: str | None, reason: str | None, action: str
    ) -> dict[str, Any]:
        at = self._clock().astimezone(UTC).isoformat(timespec="microseconds")
        return {
            "program_id": program_id,
            "version": version,
            "action": action,
            "actor": actor,
            "reason": reason,
            "released_at": at,
        }
