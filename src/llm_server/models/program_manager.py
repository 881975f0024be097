"""DSPy program registration, versioning and optimization tracking.

A host registers its programs once at startup::

    program_manager = ProgramManager(model_manager=model_manager, storage_adapter=storage)
    program_manager.register_program(program_class=Predictor, name="Text Completion")

Each program has an id derived from its class (``Predictor`` -> ``predictor``) and is served
at one version. Versions are immutable snapshots of the program's DSPy JSON state kept by the
storage adapter, each with a manifest recording its lineage. On first registration, when the
storage holds no version of the program yet, the untrained program is saved as the first
version (``1.0.0`` with :class:`~llm_server.defaults.FileSystemStorageAdapter`), so every
version a host serves is on disk and every optimized version has a parent.

After an optimizer ran, :meth:`ProgramManager.save_program_version` stores the result as a
new version. A program registered without ``version=`` follows the versions saved through
its manager; one registered with ``version="1.0.0"`` keeps serving that version while newer
ones exist.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.to_thread
from anyio.lowlevel import RunVar

from llm_server._deprecation import deprecated
from llm_server.core.errors import (
    CorruptProgramError,
    ProgramError,
    ProgramNotFoundError,
)
from llm_server.core.protocols import StorageAdapter, StoredProgram
from llm_server.models import _program_state as ps
from llm_server.models._canary_control import CanaryController
from llm_server.models._canary_methods import CanaryMethods
from llm_server.models._program_registry import (
    Entry,
    ProgramMetadata,
    ProgramRegistry,
    metadata_for,
)
from llm_server.models._releases import LocalReleases, ReleasingStorage
from llm_server.models._versioning import (
    canonical_json,
    check_score,
    derive_program_id,
    hash_trainset,
    sha256_hex,
    validate_program_id,
    validate_version,
)

__all__ = [
    "LATEST",
    "ModelManagerLike",
    "ProgramManager",
    "ProgramMetadata",
    "ProgramRegistry",
    "ReleasingStorage",
]

_log = logging.getLogger("llm_server.models.program_manager")

LATEST = "latest"
"""Pass as ``version`` to :meth:`ProgramManager.get_program` for the newest stored version."""

_T = TypeVar("_T")


@runtime_checkable
class ModelManagerLike(Protocol):
    """What the program manager needs from a model manager."""

    @property
    def model_info(self) -> Mapping[str, Any]:
        """Public facts about each configured model, by model id."""
        ...

    def reliable_backend(self, program: Any, model_id: str, *, program_metadata: Any = None) -> Any:
        """The backend requests use for ``program`` on ``model_id`` (retries, breaker,
        deadline and fallbacks included), reporting ``program_metadata``."""
        ...


@runtime_checkable
class _LocatingStorage(Protocol):
    def location(self, program_id: str, version: str) -> str: ...


class ProgramManager(CanaryMethods):
    """Registers DSPy programs and keeps their immutable, versioned state.

    Args:
        model_manager: The model manager (``model_info`` and ``reliable_backend`` are used).
        storage_adapter: Where program versions are stored.
        max_io_threads: Worker threads the async methods may use for storage I/O. They have
            their own limiter, so slow disks never starve the event loop's default executor
            that DSPy's async calls rely on.
        clock: Returns the current time (UTC) for ``created_at``; injectable for tests.
    """

    def __init__(
        self,
        *,
        model_manager: ModelManagerLike,
        storage_adapter: StorageAdapter,
        max_io_threads: int = 4,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._model_manager = model_manager
        self._storage = storage_adapter
        self._clock = clock or (lambda: datetime.now(UTC))
        self._max_io_threads = max_io_threads
        # One limiter per event loop: anyio limiters are bound to the loop that first uses them.
        self._limiter: RunVar[anyio.CapacityLimiter] = RunVar(f"llm_server_program_io_{id(self)}")
        self._verified: dict[tuple[str, str], StoredProgram] = {}
        self._local = LocalReleases(clock=self._clock)
        self._locks_lock = threading.Lock()
        self._program_locks: dict[str, threading.Lock] = {}
        self.registry = ProgramRegistry()
        """The registered programs; ``registry.get_program_metadata(id)`` for the envelope."""
        self._canary_control = CanaryController(self)  # canaries: models/_canary_control.py

    @property
    def model_manager(self) -> ModelManagerLike:
        """The model manager given at construction."""
        return self._model_manager

    @property
    def model_info(self) -> Mapping[str, Any]:
        """The model manager's ``model_info``: public facts about each model, by id."""
        return self._model_manager.model_info

    @property
    def storage_adapter(self) -> StorageAdapter:
        """The storage adapter given at construction."""
        return self._storage

    # --- registration ----------------------------------------------------------------------

    def register_program(
        self,
        program_class: type,
        *,
        name: str | None = None,
        version: str | None = None,
        description: str | None = None,
        program_id: str | None = None,
        adapter: Literal["chat", "json", "xml"] | None = None,
    ) -> ProgramMetadata:
        """Register a ``dspy.Signature`` (run as ``dspy.Predict``) or ``dspy.Module`` subclass.

        Registering the same class again is allowed (it re-resolves the served version).
        Does blocking storage I/O: call it at startup.

        Args:
            program_class: The signature or module class; modules must build without arguments.
            name: Display name for the envelope (default: the class name).
            version: Serve this stored version (pin); by default the version released last
                (a :class:`ReleasingStorage`), else the latest stored version.
            description: Free text kept in the metadata.
            program_id: Override the id derived from the class name.
            adapter: The DSPy adapter for this program on every model (``chat``, ``json``,
                ``xml``); ``None``: the model's ``adapter:``, else the host's default.

        Returns:
            The metadata of the served version.

        Raises:
            ProgramAlreadyRegisteredError: Another class is registered under the id.
            ProgramNotFoundError: The pinned version is not stored.
            CorruptProgramError: The stored version does not belong to this class.
        """
        kind = ps.program_kind(program_class)
        pid = validate_program_id(program_id or derive_program_id(program_class.__name__))
        if version is not None:
            validate_version(version)
        self.registry.check_free(pid, program_class)
        fresh = ps.instantiate(program_class, kind)
        base = Entry(
            program_class=program_class,
            kind=kind,
            fields=ps.signature_fields(fresh),
            metadata=ProgramMetadata(
                id=pid,
                version="",
                name=name or program_class.__name__,
                description=description,
                class_path=ps.class_path(program_class),
                pinned=version is not None,
                adapter=adapter,
            ),
        )
        released = (
            self._storage.released_version(pid)
            if version is None and isinstance(self._storage, ReleasingStorage)
            else None
        )
        if self._storage.list_versions(pid):
            stored = self._storage.load(pid, version or released)
        else:
            initial_state = fresh.dump_state()
            manifest = self._manifest(base, initial_state, notes="initial version (registration)")
            stored = self._storage.save(pid, initial_state, manifest)
            if version is not None and version != stored.version:
                stored = self._storage.load(pid, version)
        self._verify(base, stored)
        entry = replace(base, metadata=metadata_for(base.metadata, stored))
        self.registry.add(pid, entry)
        return entry.metadata

    # --- loading ---------------------------------------------------------------------------

    def get_program(self, program_id: str, version: str | None = None) -> Any:
        """A new program instance with a stored version's state loaded.

        Args:
            program_id: A registered program id.
            version: ``None`` for the version the registry serves, :data:`LATEST` for the
                newest stored version, or a version name.

        Raises:
            ProgramNotFoundError: Unknown program or version.
            CorruptProgramError: The stored version fails its integrity or class checks.
        """
        entry = self.registry.entry(program_id)
        stored = self._load_verified(entry, version)
        program = ps.instantiate(entry.program_class, entry.kind)
        return ps.apply_state(program, stored.state, self._where(program_id, stored.version))

    def get_version_metadata(self, program_id: str, version: str | None = None) -> ProgramMetadata:
        """Metadata of a stored version (same ``version`` rules as :meth:`get_program`)."""
        entry = self.registry.entry(program_id)
        return metadata_for(entry.metadata, self._load_verified(entry, version))

    def list_versions(self, program_id: str) -> list[str]:
        """Stored versions of a registered program, oldest first."""
        self.registry.entry(program_id)
        return self._storage.list_versions(program_id)

    def reliable_backend(
        self, program_id: str, model_id: str, *, version: str | None = None
    ) -> Any:
        """The backend requests use for a version of the program (default: the served one).

        It is the model manager's :meth:`~llm_server.models.manager.ModelManager.reliable_backend`
        (retries, breaker, deadline and fallbacks around one HTTP attempt); its outputs report
        the version's metadata.
        """
        metadata = self.get_version_metadata(program_id, version)
        program = self.get_program(program_id, metadata.version)
        return self._model_manager.reliable_backend(program, model_id, program_metadata=metadata)

    def create_backend(self, program_id: str, model_id: str, *, version: str | None = None) -> Any:
        """Deprecated: the same as :meth:`reliable_backend` (which says what it returns)."""
        deprecated("ProgramManager.create_backend", "ProgramManager.reliable_backend")
        return self.reliable_backend(program_id, model_id, version=version)

    # --- saving ----------------------------------------------------------------------------

    def save_program_version(
        self,
        program_id: str,
        program: Any,
        *,
        parent_version: str | None = None,
        optimizer: str | None = None,
        optimizer_settings: Mapping[str, Any] | None = None,
        score: float | None = None,
        trainset: Sequence[Any] | None = None,
        notes: str | None = None,
        evaluation: Mapping[str, Any] | None = None,
    ) -> ProgramMetadata:
        """Store ``program`` (e.g. an optimizer's result) as a new immutable version.

        A program registered without a pinned version then serves the new version.

        Args:
            program_id: A registered program id.
            program: An instance of the registered module (or a ``dspy.Predict`` of the
                registered signature).
            parent_version: The version the program was derived from; default: the served one.
            optimizer: The optimizer's name, e.g. ``"BootstrapFewShot"``.
            optimizer_settings: JSON-serialisable optimizer settings.
            score: The evaluation score of the new version.
            trainset: The training examples; only their sha256 and count are stored.
            notes: Free text.
            evaluation: JSON facts about how the version was evaluated and what its
                optimization cost (:func:`~llm_server.models.optimization.optimize_program`
                records scores before and after, the devset's fingerprint, tokens and cost).

        Returns:
            The new version's metadata.

        Raises:
            ProgramNotFoundError: Unknown program or parent version.
            ProgramError: ``program`` is not of the registered class, or something is not JSON.
        """
        entry = self.registry.entry(program_id)
        self._check_instance(entry, program)
        parent = validate_version(parent_version or entry.metadata.version)
        if parent not in self._storage.list_versions(program_id):
            raise ProgramNotFoundError(f"program {program_id!r} has no version {parent!r}")
        state = program.dump_state()
        manifest = self._manifest(
            entry,
            state,
            parent_version=parent,
            optimizer=optimizer,
            optimizer_settings=dict(optimizer_settings) if optimizer_settings else None,
            score=check_score(score),
            trainset_sha256=hash_trainset(trainset) if trainset is not None else None,
            trainset_size=len(trainset) if trainset is not None else None,
            notes=notes,
            **({"evaluation": dict(evaluation)} if evaluation else {}),
        )
        stored = self._storage.save(program_id, state, manifest)
        self._verified[(program_id, stored.version)] = stored
        metadata = metadata_for(entry.metadata, stored)
        if not isinstance(self._storage, ReleasingStorage):
            self.registry.advance(program_id, metadata)  # a fleet serves what is promoted
        return metadata

    # --- releases ----------------------------------------------------------------------------

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

    # --- async wrappers --------------------------------------------------------------------

    async def aget_program(self, program_id: str, version: str | None = None) -> Any:
        """:meth:`get_program` with storage I/O in a worker thread."""
        return await self._run(self.get_program, program_id, version)

    async def asave_program_version(
        self,
        program_id: str,
        program: Any,
        *,
        parent_version: str | None = None,
        optimizer: str | None = None,
        optimizer_settings: Mapping[str, Any] | None = None,
        score: float | None = None,
        trainset: Sequence[Any] | None = None,
        notes: str | None = None,
    ) -> ProgramMetadata:
        """:meth:`save_program_version` with storage I/O in a worker thread."""
        save = functools.partial(
            self.save_program_version,
            program_id,
            program,
            parent_version=parent_version,
            optimizer=optimizer,
            optimizer_settings=optimizer_settings,
            score=score,
            trainset=trainset,
            notes=notes,
        )
        return await self._run(save)

    async def apromote(
        self,
        program_id: str,
        version: str,
        *,
        actor: str | None = None,
        reason: str | None = None,
    ) -> ProgramMetadata:
        """:meth:`promote` with storage I/O in a worker thread."""
        promote = functools.partial(self.promote, program_id, version, actor=actor, reason=reason)
        return await self._run(promote)

    async def arollback(
        self, program_id: str, *, actor: str | None = None, reason: str | None = None
    ) -> ProgramMetadata:
        """:meth:`rollback` with storage I/O in a worker thread."""
        return await self._run(
            functools.partial(self.rollback, program_id, actor=actor, reason=reason)
        )

    async def aget_version_metadata(
        self, program_id: str, version: str | None = None
    ) -> ProgramMetadata:
        """:meth:`get_version_metadata` with storage I/O in a worker thread."""
        return await self._run(self.get_version_metadata, program_id, version)

    async def areliable_backend(
        self, program_id: str, model_id: str, *, version: str | None = None
    ) -> Any:
        """:meth:`reliable_backend` with storage I/O in a worker thread."""
        build = functools.partial(self.reliable_backend, program_id, model_id, version=version)
        return await self._run(build)

    async def alist_versions(self, program_id: str) -> list[str]:
        """:meth:`list_versions` in a worker thread."""
        return await self._run(self.list_versions, program_id)

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        try:
            limiter = self._limiter.get()
        except LookupError:
            limiter = anyio.CapacityLimiter(self._max_io_threads)
            self._limiter.set(limiter)
        return await anyio.to_thread.run_sync(func, *args, limiter=limiter)

    # --- internals -------------------------------------------------------------------------

    def _load_verified(self, entry: Entry, version: str | None) -> StoredProgram:
        pid = entry.metadata.id
        if version == LATEST:
            versions = self._storage.list_versions(pid)
            if not versions:
                raise ProgramNotFoundError(f"program {pid!r} has no stored versions")
            version = versions[-1]
        wanted = validate_version(version or entry.metadata.version)
        cached = self._verified.get((pid, wanted))  # versions are immutable: safe to cache
        if cached is not None:
            return cached
        stored = self._storage.load(pid, wanted)
        self._verify(entry, stored)
        return stored

    def _verify(self, entry: Entry, stored: StoredProgram) -> None:
        where = self._where(stored.program_id, stored.version)
        manifest = stored.manifest
        recorded_class = manifest.get("program_class")
        if recorded_class != entry.metadata.class_path:
            raise CorruptProgramError(
                f"{where}: saved from class {recorded_class!r}, not {entry.metadata.class_path!r}"
            )
        if manifest.get("signature_fields") != entry.fields:
            raise CorruptProgramError(
                f"{where}: signature fields {manifest.get('signature_fields')!r} differ from "
                f"the program's {entry.fields!r}"
            )
        if manifest.get("content_sha256") != sha256_hex(canonical_json(dict(stored.state))):
            raise CorruptProgramError(f"{where}: content sha256 does not match the state")
        fresh = ps.instantiate(entry.program_class, entry.kind)
        ps.check_state_shape(stored.state, fresh.dump_state(), where, kind=entry.kind)
        ps.apply_state(fresh, stored.state, where)
        self._verified[(stored.program_id, stored.version)] = stored

    def _check_instance(self, entry: Entry, program: Any) -> None:
        expected = "dspy.Predict" if entry.kind == "signature" else entry.metadata.class_path
        ok = (
            isinstance(program, ps.predict_class())
            if entry.kind == "signature"
            else isinstance(program, entry.program_class)
        )
        if not ok or ps.signature_fields(program) != entry.fields:
            raise ProgramError(
                f"program {entry.metadata.id!r} expects an instance of {expected} with fields "
                f"{entry.fields!r}; got {type(program).__name__}"
            )

    def _manifest(self, entry: Entry, state: Mapping[str, Any], **lineage: Any) -> dict[str, Any]:
        created_at = self._clock().astimezone(UTC).isoformat(timespec="microseconds")
        return {
            "program_class": entry.metadata.class_path,
            "program_kind": entry.kind,
            "signature_fields": entry.fields,
            "content_sha256": sha256_hex(canonical_json(dict(state))),
            "dspy_version": ps.dspy_version(),
            "created_at": created_at.replace("+00:00", "Z"),
            "parent_version": None,
            **lineage,
        }

    def _where(self, program_id: str, version: str) -> str:
        if isinstance(self._storage, _LocatingStorage):
            return f"{self._storage.location(program_id, version)}/manifest.json"
        return f"program {program_id!r} version {version!r} in {self._storage!r}"
