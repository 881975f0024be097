"""The program manager's releases: promote, roll back, the history, and following a fleet.

Mixed into :class:`~llm_server.models.program_manager.ProgramManager`; with a
:class:`ReleasingStorage` (PostgreSQL) releases are the storage's and every replica follows
them, otherwise they are this process's (:class:`LocalReleases`).
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from llm_server.core.protocols import StorageAdapter, StoredProgram
from llm_server.programs._registry import Entry, ProgramMetadata, ProgramRegistry, metadata_for
from llm_server.programs._releases import LocalReleases, ReleasingStorage
from llm_server.programs._versioning import validate_version

if TYPE_CHECKING:
    from llm_server.programs._canary_control import CanaryController

__all__ = ["ReleaseMethods"]

_log = logging.getLogger("llm_server.models.program_manager")


class ReleaseMethods:
    """The program manager's release methods (mixed into ``ProgramManager``)."""

    _storage: StorageAdapter
    _local: LocalReleases
    _locks_lock: threading.Lock
    _program_locks: dict[str, threading.Lock]
    registry: ProgramRegistry
    _canary_control: CanaryController

    def _load_verified(self, entry: Entry, version: str | None) -> StoredProgram:
        raise NotImplementedError  # ProgramManager's

    def promote(
        self,
        program_id: str,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ProgramMetadata:
        """Serve ``version`` from now on, and record who released it, when and why.

        With a :class:`ReleasingStorage` (PostgreSQL) every process serving the program
        switches within about a second; otherwise this process does, at once. Requests
        already running finish on the version they started with. This process then serves
        what is released last (another release made meanwhile wins).

        Returns:
            The released version's metadata.

        Raises:
            ProgramNotFoundError: Unknown program or version.
            CorruptProgramError: The version fails its checks (nothing is released).
            StorageError: The storage failed: nothing is released, or (when raised after
                the release was recorded) this process's watcher switches on its next round.
        """
        entry = self.registry.entry(program_id)
        stored = self._load_verified(entry, validate_version(version))  # checked before told
        if isinstance(self._storage, ReleasingStorage):
            self._storage.promote(
                program_id,
                stored.version,
                actor=actor,
                reason=reason,
                served_before=entry.metadata.version,
            )
            self._serve_released(program_id)
        else:
            self._local.promote(
                program_id,
                stored.version,
                serving=self.registry.entry(program_id).metadata.version,
                actor=actor,
                reason=reason,
                apply=lambda: self.registry.serve(program_id, metadata_for(entry.metadata, stored)),
            )
        _log.info("program %r: promote %s (by %s)", program_id, stored.version, actor or "unknown")
        return metadata_for(entry.metadata, stored)

    def rollback(
        self, program_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> ProgramMetadata:
        """Serve again the version released before the current one (undoes a promotion).

        After ``A -> B -> C``, a rollback serves ``B`` and another one ``A``. The target is
        computed and recorded atomically (with PostgreSQL: in one transaction under the
        program's lock), so two rollbacks at once take two steps back, never the same one.

        Returns:
            The metadata of the version rolled back to.

        Raises:
            ProgramError: Nothing was released before the current version.
            StorageError: The storage failed (as for :meth:`promote`).
        """
        entry = self.registry.entry(program_id)

        def check(version: str) -> StoredProgram:
            return self._load_verified(entry, version)

        if isinstance(self._storage, ReleasingStorage):
            release = self._storage.rollback(program_id, actor=actor, reason=reason, check=check)
            stored = check(str(release["version"]))
            self._serve_released(program_id)
        else:

            def apply(version: str) -> StoredProgram:
                target = check(version)
                self.registry.serve(program_id, metadata_for(entry.metadata, target))
                return target

            stored = self._local.rollback(program_id, actor=actor, reason=reason, apply=apply)
        _log.info("program %r: rollback to %s (by %s)", program_id, stored.version, actor or "?")
        return metadata_for(entry.metadata, stored)

    def releases(self, program_id: str) -> list[dict[str, Any]]:
        """Every promotion and rollback of the program, oldest first."""
        self.registry.entry(program_id)
        if isinstance(self._storage, ReleasingStorage):
            return [dict(r) for r in self._storage.releases(program_id)]
        return self._local.history(program_id)

    def follow_releases(self, *, interval_s: float = 1.0) -> bool:
        """Serve what every release says, as the storage announces it (call at startup).

        Every announcement, and every ``interval_s`` anyway, compares what this process
        serves with what is released and switches when they differ; a switch that failed
        (the version could not be loaded) is tried again on the next round. Canaries are
        followed and judged from now on too (:meth:`start_canary`); :meth:`close` stops that.

        Returns:
            Whether the storage can announce releases (a :class:`ReleasingStorage`).
        """
        self._canary_control.follow(shared_only=True)  # canaries of a shared storage
        if not isinstance(self._storage, ReleasingStorage):
            return False
        self._storage.watch(self._released, interval_s=interval_s)
        return True

    def _released(self, program_id: str, version: str) -> None:
        """The watcher read what is released: serve it, if this process serves another."""
        if program_id not in self.registry:
            return  # released, but not served by this process
        if self.registry.entry(program_id).metadata.version != version:
            self._serve_released(program_id)

    def _serve_released(self, program_id: str) -> None:
        """Serve the version released last, read afresh under the program's lock.

        Every switch to a release goes through here (the watcher, :meth:`promote`,
        :meth:`rollback`), each reading the storage while holding the lock, so the last
        switch is always to the newest release read: a promotion returning late cannot put
        back an older version after the watcher applied a newer one.
        """
        assert isinstance(self._storage, ReleasingStorage)
        with self._locks_lock:
            lock = self._program_locks.setdefault(program_id, threading.Lock())
        with lock:
            version = self._storage.released_version(program_id)
            entry = self.registry.entry(program_id)
            if version is None or entry.metadata.version == version:
                return
            stored = self._load_verified(entry, version)
            if self.registry.serve(program_id, metadata_for(entry.metadata, stored)):
                _log.info("program %r: now serving %s (released)", program_id, version)
