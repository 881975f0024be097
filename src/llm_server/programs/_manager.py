"""The program manager: registration, serving, saving and releasing versions.

Public at :mod:`llm_server.models.program_manager`.
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
    ProgramNotFoundError,
)
from llm_server.core.model_config import ParsePolicy
from llm_server.core.protocols import StorageAdapter, StoredProgram
from llm_server.programs import _state as ps
from llm_server.programs._canary_control import CanaryController
from llm_server.programs._canary_methods import CanaryMethods
from llm_server.programs._integrity import check_instance, manifest_for, verify, where
from llm_server.programs._manager_releases import ReleaseMethods
from llm_server.programs._registry import (
    Entry,
    ProgramMetadata,
    ProgramRegistry,
    metadata_for,
)
from llm_server.programs._releases import LocalReleases, ReleasingStorage
from llm_server.programs._traffic_methods import TrafficMethods
from llm_server.programs._versioning import (
    check_score,
    derive_program_id,
    hash_trainset,
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


class ProgramManager(ReleaseMethods, CanaryMethods, TrafficMethods):
    """Registers DSPy programs and keeps their immutable, versioned state.

    Args:
        model_manager: The model manager (``model_info`` and ``reliable_backend`` are used).
        storage_adapter: Where program versions are stored.
        max_io_threads: Worker threads the async methods may use for storage I/O. They have
            their own limiter, so slow disks never starve the event loop's default executor
            that DSPy's async calls rely on.
        clock: Returns the current time (UTC) for ``created_at``; injectable for tests.
        traffic: A :class:`~llm_server.traffic.TrafficRecorder` for the programs that capture
            their traffic (default: created on the first ``register_program(capture=...)``).
    """

    def __init__(
        self,
        *,
        model_manager: ModelManagerLike,
        storage_adapter: StorageAdapter,
        max_io_threads: int = 4,
        clock: Callable[[], datetime] | None = None,
        traffic: Any = None,
    ) -> None:
        self.traffic: Any = traffic
        """The :class:`~llm_server.traffic.TrafficRecorder` of capturing programs, or ``None``."""
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
        self._canary_control = CanaryController(self)  # canaries: programs/_canary_control.py

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
        parse_policy: ParsePolicy | None = None,
        capture: Any = None,
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
            parse_policy: What to do with this program's answers that cannot be parsed, on
                every model (re-asks, JSON fallback, a larger ``max_tokens`` after a cut
                answer); ``None``: the model's ``parse_policy:``, else ask nothing more.
            capture: :class:`~llm_server.traffic.CaptureOptions`: capture this program's
                traffic (sample rate, retention, redaction, online evaluation); see
                :func:`~llm_server.traffic.enable_capture`. ``None``: the model
                configuration's ``capture:`` entry for the program id, if any (these options
                win over it).

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
                parse_policy=parse_policy,
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
            manifest = manifest_for(
                base, initial_state, self._clock(), notes="initial version (registration)"
            )
            stored = self._storage.save(pid, initial_state, manifest)
            if version is not None and version != stored.version:
                stored = self._storage.load(pid, version)
        self._verify(base, stored)
        entry = replace(base, metadata=metadata_for(base.metadata, stored))
        self.registry.add(pid, entry)
        if capture is None:
            capture = self._configured_capture(pid)
        if capture is not None:
            from llm_server.traffic import enable_capture  # imported only by capturing hosts

            enable_capture(self, pid, capture)
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
        return ps.apply_state(
            program, stored.state, where(self._storage, program_id, stored.version)
        )

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
        check_instance(entry, program)
        parent = validate_version(parent_version or entry.metadata.version)
        if parent not in self._storage.list_versions(program_id):
            raise ProgramNotFoundError(f"program {program_id!r} has no version {parent!r}")
        state = program.dump_state()
        manifest = manifest_for(
            entry,
            state,
            self._clock(),
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
        verify(entry, stored, where(self._storage, stored.program_id, stored.version))
        self._verified[(stored.program_id, stored.version)] = stored
