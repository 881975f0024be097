"""Canary releases: a share of a program's traffic on a new version, judged and ended.

A canary names a program, the version tried (``version``), the version served to everyone
else (``stable_version``), the share (``weight``) and how requests are kept on one side
(``sticky``):

- ``"request"``: each request on its own (a random key);
- ``"tenant"``: the request's tenant (:func:`~llm_server.tenant_scope`), else per request;
- ``"header:<Name>"``: a request header, e.g. ``"header:X-Session-Id"``, else per request.

A key is on the canary when ``sha256(program_id, canary id, key)`` read as a fraction of
2^64 is below ``weight``: the same answer on every replica, with no state to share, and a new
canary (a new id) draws new sides. Where canaries are kept:

- :class:`LocalCanaryBook` (the file-system storage, and any storage without canaries): in
  this process only; other processes do not see them;
- :class:`~llm_server.postgres.PostgresStorageAdapter`: a table, so every replica follows
  (each reads the active canaries every 0.5 s).

Ending a canary (``promote`` or ``rollback``) is recorded on it (who, when, why, outcome); a
promotion is also a release of the version (:meth:`ProgramManager.promote`).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from llm_server.core.errors import ProgramError
from llm_server.programs._canary_guard import CanaryGuard

__all__ = [
    "Canary",
    "CanaryStorage",
    "LocalCanaryBook",
    "check_sticky",
    "on_canary",
]

OUTCOMES = ("promote", "rollback")


@dataclass(frozen=True, slots=True)
class Canary:
    """One canary release, running or ended.

    Attributes:
        id: Its id (unique per storage; part of the assignment hash).
        program_id: The program.
        version: The version tried on ``weight`` of the traffic.
        stable_version: The version everyone else is served.
        weight: The canary's share of keys, in (0, 1).
        sticky: ``"request"``, ``"tenant"`` or ``"header:<Name>"``.
        guard: The thresholds the guard judges it by (``None``: ended by hand only).
        actor: Who started it.
        reason: Why.
        started_at: ISO-8601 UTC.
        ended_at: ISO-8601 UTC, ``None`` while running.
        outcome: ``"promote"`` or ``"rollback"`` once ended.
        ended_by: Who ended it (``"canary-guard"`` when the guard did).
        end_reason: Why it was ended (the guard writes the figures that decided).
    """

    id: str
    program_id: str
    version: str
    stable_version: str
    weight: float
    sticky: str
    guard: CanaryGuard | None
    actor: str | None
    reason: str | None
    started_at: str
    ended_at: str | None = None
    outcome: str | None = None
    ended_by: str | None = None
    end_reason: str | None = None

    @property
    def active(self) -> bool:
        """Whether it is still running."""
        return self.ended_at is None

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON."""
        return {
            "id": self.id,
            "program_id": self.program_id,
            "version": self.version,
            "stable_version": self.stable_version,
            "weight": self.weight,
            "sticky": self.sticky,
            "guard": self.guard.to_dict() if self.guard is not None else None,
            "actor": self.actor,
            "reason": self.reason,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "outcome": self.outcome,
            "ended_by": self.ended_by,
            "end_reason": self.end_reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Canary:
        """A record read back from :meth:`to_dict` (or a storage's row)."""
        guard = data.get("guard")
        return cls(
            id=str(data["id"]),
            program_id=str(data["program_id"]),
            version=str(data["version"]),
            stable_version=str(data["stable_version"]),
            weight=float(data["weight"]),
            sticky=str(data["sticky"]),
            guard=CanaryGuard.from_dict(dict(guard)) if guard else None,
            actor=data.get("actor"),
            reason=data.get("reason"),
            started_at=str(data["started_at"]),
            ended_at=data.get("ended_at"),
            outcome=data.get("outcome"),
            ended_by=data.get("ended_by"),
            end_reason=data.get("end_reason"),
        )


def on_canary(canary: Canary, key: str) -> bool:
    """Whether requests with ``key`` go to the canary version (the same on every replica)."""
    digest = hashlib.sha256(f"{canary.program_id}\0{canary.id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64 < canary.weight


def check_sticky(sticky: str) -> str:
    """``sticky`` if it is ``request``, ``tenant`` or ``header:<Name>``.

    Raises:
        ProgramError: Anything else.
    """
    if sticky in ("request", "tenant"):
        return sticky
    if sticky.startswith("header:") and sticky[7:].strip() and ":" not in sticky[7:]:
        return sticky
    raise ProgramError(
        f"canary sticky must be 'request', 'tenant' or 'header:<Name>' (e.g. "
        f"'header:X-Session-Id'), not {sticky!r}"
    )


def check_weight(weight: float) -> float:
    """``weight`` if it is a share strictly between 0 and 1.

    Raises:
        ProgramError: Anything else.
    """
    if not (isinstance(weight, int | float) and 0.0 < float(weight) < 1.0):
        raise ProgramError(f"canary weight must be between 0 and 1 (e.g. 0.1), not {weight!r}")
    return float(weight)


@runtime_checkable
class CanaryStorage(Protocol):
    """A storage that keeps canaries (:class:`LocalCanaryBook`, PostgreSQL's table)."""

    def start_canary(self, canary: Canary) -> Canary:
        """Record a new canary (its ``id`` is assigned here).

        Raises:
            ProgramError: The program already has a running canary.
        """
        ...

    def end_canary(
        self,
        program_id: str,
        *,
        outcome: str,
        actor: str | None,
        reason: str | None,
        canary_id: str | None = None,
    ) -> Canary:
        """End the running canary (only ``canary_id``'s, when given), atomically: one ender
        wins. A promotion is also recorded as a release where the storage keeps releases.

        Raises:
            ProgramError: No running canary (or another one than ``canary_id``).
        """
        ...

    def canaries(self, program_id: str | None = None) -> Sequence[Canary]:
        """Every canary (of ``program_id``), oldest first, running ones included."""
        ...

    def active_canaries(self) -> dict[str, Canary]:
        """The running canary of each program that has one."""
        ...


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class LocalCanaryBook:
    """Canaries kept in this process's memory (a :class:`CanaryStorage`).

    The file-system storage keeps its canaries here: they are per process, like its
    releases; use PostgreSQL for a fleet.
    """

    def __init__(self) -> None:
        self._canary_lock = threading.Lock()
        self._canary_book: list[Canary] = []

    def _canary_list(self) -> list[Canary]:
        # A mixin's state may be missing when the host's subclass skipped our __init__.
        book: list[Canary] | None = getattr(self, "_canary_book", None)
        if book is None:
            book = self._canary_book = []
            self._canary_lock = threading.Lock()
        return book

    def start_canary(self, canary: Canary) -> Canary:
        """Record a new canary in memory (see :meth:`CanaryStorage.start_canary`)."""
        book = self._canary_list()
        with self._canary_lock:
            if any(c.active and c.program_id == canary.program_id for c in book):
                raise ProgramError(f"program {canary.program_id!r} already has a running canary")
            started = _replace(canary, id=str(len(book) + 1), started_at=_now())
            book.append(started)
            return started

    def end_canary(
        self,
        program_id: str,
        *,
        outcome: str,
        actor: str | None,
        reason: str | None,
        canary_id: str | None = None,
    ) -> Canary:
        """End the running canary in memory (see :meth:`CanaryStorage.end_canary`)."""
        book = self._canary_list()
        with self._canary_lock:
            for index, canary in enumerate(book):
                if canary.active and canary.program_id == program_id:
                    if canary_id is not None and canary.id != canary_id:
                        break
                    ended = _replace(
                        canary,
                        ended_at=_now(),
                        outcome=outcome,
                        ended_by=actor,
                        end_reason=reason,
                    )
                    book[index] = ended
                    return ended
        raise ProgramError(f"program {program_id!r} has no running canary to end")

    def canaries(self, program_id: str | None = None) -> list[Canary]:
        """Every canary kept here (of ``program_id``), oldest first."""
        book = self._canary_list()
        with self._canary_lock:
            return [c for c in book if program_id is None or c.program_id == program_id]

    def active_canaries(self) -> dict[str, Canary]:
        """The running canary of each program."""
        return {c.program_id: c for c in self.canaries() if c.active}


def _replace(canary: Canary, **changes: Any) -> Canary:
    return Canary(**{**canary.to_dict(), "guard": canary.guard, **changes})
