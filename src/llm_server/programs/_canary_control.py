"""The program manager's canary side: starting, following, serving, judging and ending.

:class:`~llm_server.programs._canary_methods.CanaryMethods` gives
:class:`~llm_server.models.program_manager.ProgramManager` its public canary methods;
:class:`CanaryController` does the work:

- a request asks :meth:`CanaryController.choose` which version answers (a dictionary read and,
  during a canary, one sha256: no I/O);
- one background thread per process reads the running canaries from a shared storage every
  0.5 s (PostgreSQL: every replica splits within a second of the start) and, every 0.5 s, runs
  the guard on each guarded canary, if this process is the fleet's decider (a Redis lease
  with a fleet; else a PostgreSQL session lock; with files this process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics

from llm_server.core.errors import ProgramError
from llm_server.programs._canary import (
    OUTCOMES,
    Canary,
    CanaryStorage,
    LocalCanaryBook,
    check_sticky,
    check_weight,
    on_canary,
)
from llm_server.programs._canary_guard import CanaryGuard, ScoreFigures, decide, look_index
from llm_server.programs._version_stats import VersionStats
from llm_server.programs._versioning import validate_version

if TYPE_CHECKING:
    from llm_server.models.program_manager import ProgramManager
    from llm_server.programs._registry import ProgramMetadata

__all__ = ["GUARD_ACTOR", "CanaryController", "Choice", "guard_from"]

_log = logging.getLogger("llm_server.models.canary")

GUARD_ACTOR = "canary-guard"
"""The ``ended_by`` of canaries the guard ended."""
TICK_S = 0.5
FEEDBACK_EVERY_S = 2.0
"""How often the guard reads feedback scores (one query per guarded canary) when it uses them."""

CanaryListener = Callable[[Canary], None]


class Choice:
    """The version one request runs: its metadata, whether it is the canary, its figures' scope."""

    __slots__ = ("canary", "metadata", "scope")

    def __init__(self, metadata: ProgramMetadata, *, canary: bool, scope: str) -> None:
        self.metadata = metadata
        self.canary = canary
        self.scope = scope


class CanaryController:
    """Canaries of one program manager (see the module docstring)."""

    def __init__(self, manager: ProgramManager) -> None:
        self._pm = manager
        storage = manager.storage_adapter
        self.storage: CanaryStorage = (
            storage if isinstance(storage, CanaryStorage) else LocalCanaryBook()
        )
        self.shared = hasattr(storage, "watch") and self.storage is storage
        self.stats = VersionStats()
        self._active: dict[str, tuple[Canary, ProgramMetadata]] = {}
        self._looks: dict[str, int] = {}
        self._score_cache: dict[str, tuple[float, tuple[ScoreFigures, ScoreFigures] | None]] = {}
        self._unusable: set[str] = set()  # canaries whose version failed its checks here
        self._listeners: list[CanaryListener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # The guard's decider: one per fleet (a Redis lease; else a PostgreSQL session lock,
        # judging that process's own figures), else this process.
        self._decider: Callable[[], bool] = getattr(self.storage, "hold_decider_lock", lambda: True)
        fleet = getattr(manager.model_manager, "fleet", None)
        if fleet is not None:
            from llm_server.fleet._version_stats import FleetLock, RedisVersionStats

            RedisVersionStats(fleet.connection, self.stats)
            self._decider = FleetLock(fleet.connection, "canary-guard").acquire
        meter = metrics.get_meter("llm_server.programs")
        self._ends = meter.create_counter(
            "llm_server.canary.ends",
            unit="{canary}",
            description="Canaries ended, by program, outcome and whether the guard ended them",
        )

    # --- the request path --------------------------------------------------------------------

    def choose(self, program_id: str, key_of: Callable[[str], str | None]) -> Choice:
        """The version a request runs; ``key_of(sticky)`` gives its sticky key (or ``None``)."""
        served = self._pm.registry.get_program_metadata(program_id)
        running = self._active.get(program_id)
        if running is None or running[0].version == served.version:
            # no canary, or its promotion is served already (read before the canary's end)
            return Choice(served, canary=False, scope="")
        canary, metadata = running
        key = key_of(canary.sticky)
        if key is not None and on_canary(canary, key):
            return Choice(metadata, canary=True, scope=canary.id)
        return Choice(served, canary=False, scope=canary.id)

    def running(self, program_id: str) -> Canary | None:
        """The canary this process applies to ``program_id`` now."""
        found = self._active.get(program_id)
        return found[0] if found is not None else None

    # --- operations --------------------------------------------------------------------------

    def start(
        self,
        program_id: str,
        version: str,
        *,
        weight: float,
        sticky: str,
        guard: CanaryGuard | None,
        actor: str | None,
        reason: str | None,
    ) -> Canary:
        entry = self._pm.registry.entry(program_id)
        stored = self._pm._load_verified(entry, validate_version(version))
        stable = entry.metadata.version
        if stored.version == stable:
            raise ProgramError(f"program {program_id!r} already serves {version!r} to everyone")
        if guard is not None and not isinstance(guard, CanaryGuard):
            raise ProgramError(f"guard must be a CanaryGuard or None, not {type(guard).__name__}")
        draft = Canary(
            id="",
            program_id=program_id,
            version=stored.version,
            stable_version=stable,
            weight=check_weight(weight),
            sticky=check_sticky(sticky),
            guard=guard,
            actor=actor,
            reason=reason,
            started_at="",
        )
        canary = self.storage.start_canary(draft)
        _log.info(
            "program %r: canary %s of %s at %.1f%% (by %s)",
            program_id,
            canary.id,
            canary.version,
            canary.weight * 100,
            actor or "unknown",
        )
        self.refresh()
        self.follow()
        return canary

    def end(
        self,
        program_id: str,
        *,
        outcome: str,
        actor: str | None,
        reason: str | None,
        canary_id: str | None = None,
    ) -> Canary:
        if outcome not in OUTCOMES:
            raise ProgramError(f"canary outcome must be 'promote' or 'rollback', not {outcome!r}")
        self._pm.registry.entry(program_id)
        ended = self.storage.end_canary(
            program_id, outcome=outcome, actor=actor, reason=reason, canary_id=canary_id
        )
        if outcome == "promote":
            if self.shared:  # the storage recorded the release with the end
                self._pm._serve_released(program_id)
            else:
                why = f"canary {ended.id} promoted" + (f": {reason}" if reason else "")
                self._pm.promote(program_id, ended.version, actor=actor, reason=why)
        self.refresh()
        by_guard = actor == GUARD_ACTOR
        self._ends.add(1, {"program": program_id, "outcome": outcome, "by_guard": by_guard})
        log = _log.warning if by_guard and outcome == "rollback" else _log.info
        log(
            "program %r: canary %s of %s ended: %s (by %s): %s",
            program_id,
            ended.id,
            ended.version,
            outcome,
            actor or "unknown",
            reason or "no reason given",
        )
        for listener in list(self._listeners):
            try:
                listener(ended)
            except Exception:  # a host's callback must not stop the guard
                _log.exception("canary listener failed")
        return ended

    def add_listener(self, listener: CanaryListener) -> None:
        self._listeners.append(listener)

    def figures(self, program_id: str) -> dict[str, Any]:
        """Stable and canary figures side by side (the canary's period, else since start)."""
        self._pm.registry.entry(program_id)
        canary = self.running(program_id)
        scope = canary.id if canary is not None else ""
        stable_version = (
            canary.stable_version
            if canary
            else self._pm.registry.entry(program_id).metadata.version
        )
        since = _epoch(canary.started_at) if canary is not None else None
        feedback = {
            kind: self._feedback(program_id, kind=kind, since=since) for kind in ("human", "judge")
        }
        side = {
            "version": stable_version,
            **self.stats.figures(program_id, stable_version, scope=scope).summary(),
            "feedback": _feedback_side(feedback, stable_version),
        }
        found: dict[str, Any] = {"shared": self.stats.shared, "stable": side, "canary": None}
        if canary is not None:
            found["canary"] = {
                "version": canary.version,
                "id": canary.id,
                "weight": canary.weight,
                **self.stats.figures(program_id, canary.version, scope=scope).summary(),
                "feedback": _feedback_side(feedback, canary.version),
            }
        return found

    def _feedback(
        self, program_id: str, *, kind: str, since: float | None
    ) -> dict[str, Any] | None:
        """``{version: VersionFeedback}`` of one kind (blocking I/O); ``None`` without capture."""
        traffic: Any = getattr(self._pm, "traffic", None)
        summary = getattr(traffic, "feedback_summary", None)
        if not callable(summary) or traffic.options(program_id) is None:
            return None
        return dict(summary(program_id, kind=kind, since=since))

    def _scores(self, canary: Canary) -> tuple[ScoreFigures, ScoreFigures] | None:
        """Stable's and the canary's scored feedback since it started (at most every 2 s)."""
        guard = canary.guard
        if guard is None or guard.max_score_drop is None:
            return None
        now = time.monotonic()
        cached = self._score_cache.get(canary.id)
        if cached is not None and now - cached[0] < FEEDBACK_EVERY_S:
            return cached[1]
        found = self._feedback(
            canary.program_id, kind=guard.score_kind, since=_epoch(canary.started_at)
        )
        scores: tuple[ScoreFigures, ScoreFigures] | None = None
        if found is not None:
            stable, tried = (found.get(v) for v in (canary.stable_version, canary.version))
            scores = (
                ScoreFigures(stable.scored if stable else 0, stable.mean_score if stable else None),
                ScoreFigures(tried.scored if tried else 0, tried.mean_score if tried else None),
            )
        self._score_cache[canary.id] = (now, scores)
        return scores

    # --- following and judging -------------------------------------------------------------

    def refresh(self) -> None:
        """Apply the storage's running canaries (versions are loaded and checked first)."""
        active = self.storage.active_canaries()
        applied: dict[str, tuple[Canary, ProgramMetadata]] = {}
        for program_id, canary in active.items():
            if program_id not in self._pm.registry:
                continue
            current = self._active.get(program_id)
            if current is not None and current[0].id == canary.id:
                applied[program_id] = current
                continue
            try:  # the version is loaded and checked here, never on a request
                metadata = self._pm.get_version_metadata(program_id, canary.version)
            except ProgramError as exc:
                if canary.id not in self._unusable:
                    self._unusable.add(canary.id)
                    _log.error(
                        "program %r: canary %s of %s not applied here (served: the stable "
                        "version): %s",
                        program_id,
                        canary.id,
                        canary.version,
                        exc,
                    )
                continue
            applied[program_id] = (canary, metadata)
        with self._lock:
            self._active = applied

    def follow(self, *, shared_only: bool = False) -> None:
        """Start the background thread (idempotent); ``shared_only``: only if the storage is
        shared (a local book has nothing to read until a canary starts here)."""
        if shared_only and not self.shared:
            return
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="llm-server-canaries", daemon=True
                )
                self._thread.start()

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    def _done(self) -> bool:
        """Whether the thread should end: closed, the storage closed, or (local) idle."""
        with self._lock:
            finished = (
                self._stop.is_set()
                or bool(getattr(self.storage, "closed", False))
                or (not self.shared and not self._active)
            )
            if finished:
                self._thread = None  # follow() starts another when needed
            return finished

    def _run(self) -> None:
        try:
            self._follow_and_judge()
        finally:
            release = getattr(self.storage, "release_decider_lock", None)
            if callable(release):
                release()

    def _follow_and_judge(self) -> None:
        failing = False
        while not self._stop.wait(TICK_S) and not self._done():
            try:
                if self.shared:
                    self.refresh()
                self.judge()
            except Exception as exc:  # a storage hiccup: tried again next tick
                if not failing:
                    _log.warning("canaries: following or judging failed (retrying): %s", exc)
                failing = True
            else:
                if failing:
                    _log.warning("canaries: following and judging again")
                failing = False

    def judge(self) -> None:
        """One guard pass over the running guarded canaries (if this process decides)."""
        guarded = [c for c, _ in self._active.values() if c.guard is not None]
        if not self.stats.shared:  # judging local figures: only a process that serves them
            guarded = [c for c in guarded if _served_here(self.stats, c)]
        if not guarded or not self._decider():
            return
        for canary in guarded:
            assert canary.guard is not None
            pid, scope = canary.program_id, canary.id
            self.stats.watch(pid, canary.version, scope=scope)
            self.stats.watch(pid, canary.stable_version, scope=scope)
            stable = self.stats.figures(pid, canary.stable_version, scope=scope)
            tried = self.stats.figures(pid, canary.version, scope=scope)
            look = 0
            if min(stable.requests, tried.requests) >= canary.guard.min_requests:
                now_look = look_index(tried.requests, canary.guard.min_requests)
                if now_look > self._looks.get(canary.id, 0):
                    look = self._looks[canary.id] = now_look
            scores = self._scores(canary)
            decision = decide(
                canary.guard,
                stable,
                tried,
                look=look,
                running_s=_running_s(canary.started_at),
                stable_scores=scores[0] if scores else None,
                canary_scores=scores[1] if scores else None,
            )
            if decision is None:
                continue
            try:
                self.end(
                    pid,
                    outcome=decision.outcome,
                    actor=GUARD_ACTOR,
                    reason=decision.reason,
                    canary_id=canary.id,
                )
            except ProgramError:
                self.refresh()  # someone else ended it first


def _served_here(stats: VersionStats, canary: Canary) -> bool:
    return any(
        stats.local(canary.program_id, version, scope=canary.id).requests
        for version in (canary.version, canary.stable_version)
    )


def _epoch(started_at: str) -> float | None:
    """An ISO time as epoch seconds (``None`` when unreadable)."""
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return started.timestamp()


def _feedback_side(feedback: Mapping[str, dict[str, Any] | None], version: str) -> dict[str, Any]:
    """One version's feedback figures per kind: count, scored, mean score (``None``: no capture)."""
    side: dict[str, Any] = {}
    for kind, per_version in feedback.items():
        if per_version is None:
            side[kind] = None
            continue
        found = per_version.get(version)
        side[kind] = {
            "count": found.count if found else 0,
            "scored": found.scored if found else 0,
            "mean_score": None
            if found is None or found.mean_score is None
            else round(found.mean_score, 6),
        }
    return side


def _running_s(started_at: str) -> float:
    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return 0.0
    if started.tzinfo is None:
        started = started.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())


def guard_from(value: CanaryGuard | Mapping[str, Any] | None) -> CanaryGuard | None:
    """A guard from thresholds given as a mapping (HTTP, the console), or as is."""
    if value is None or isinstance(value, CanaryGuard):
        return value
    return CanaryGuard.from_dict(dict(value))
