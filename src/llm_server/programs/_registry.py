"""The program registry and the metadata of a program version (the envelope's program block)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llm_server.core.errors import ProgramAlreadyRegisteredError, ProgramNotFoundError
from llm_server.core.model_config import ParsePolicy
from llm_server.core.protocols import StoredProgram
from llm_server.programs import _state as ps
from llm_server.programs._versioning import version_key

__all__ = ["ProgramMetadata", "ProgramRegistry", "metadata_for"]


class ProgramMetadata(BaseModel):
    """One program version as the envelope's ``program`` block describes it.

    ``model_dump()`` gives exactly ``{"id", "version", "name"}``; the other attributes carry
    the version's lineage for hosts and operators.
    """

    model_config = ConfigDict(frozen=True)

    id: str
    version: str
    name: str
    description: str | None = Field(default=None, exclude=True)
    class_path: str = Field(default="", exclude=True)
    """``module.QualName`` of the registered class."""
    pinned: bool = Field(default=False, exclude=True)
    """Whether the host pinned this version at registration."""
    adapter: Literal["chat", "json", "xml"] | None = Field(default=None, exclude=True)
    """The DSPy adapter chosen at registration (``None``: the model's, else the default)."""
    parse_policy: ParsePolicy | None = Field(default=None, exclude=True)
    """What to do with an answer that cannot be parsed, chosen at registration (``None``: the
    model's ``parse_policy:``, else ask nothing more)."""
    parent_version: str | None = Field(default=None, exclude=True)
    optimizer: str | None = Field(default=None, exclude=True)
    optimizer_settings: dict[str, Any] | None = Field(default=None, exclude=True)
    score: float | None = Field(default=None, exclude=True)
    trainset_sha256: str | None = Field(default=None, exclude=True)
    content_sha256: str | None = Field(default=None, exclude=True)
    dspy_version: str | None = Field(default=None, exclude=True)
    created_at: str | None = Field(default=None, exclude=True)
    """ISO-8601 UTC time the version was saved."""
    notes: str | None = Field(default=None, exclude=True)
    evaluation: dict[str, Any] | None = Field(default=None, exclude=True)
    """Scores before and after, the devset's fingerprint, the optimization's tokens and cost."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One registered program: its class, kind, typed fields and the served version's metadata."""

    program_class: type
    kind: ps.ProgramKind
    fields: dict[str, dict[str, list[str]]]
    metadata: ProgramMetadata


class ProgramRegistry:
    """The registered programs and the version each one serves (thread-safe)."""

    def __init__(self) -> None:
        self._entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get_program_metadata(self, program_id: str) -> ProgramMetadata:
        """The served version's metadata; ``model_dump()`` is the envelope's program block.

        Raises:
            ProgramNotFoundError: No program is registered under ``program_id``.
        """
        return self.entry(program_id).metadata

    def get_program_class(self, program_id: str) -> type:
        """The registered signature or module class."""
        return self.entry(program_id).program_class

    def list_programs(self) -> list[ProgramMetadata]:
        """Metadata of every registered program, sorted by id."""
        return [self._entries[k].metadata for k in sorted(self._entries)]

    def entry(self, program_id: str) -> Entry:
        """The registration of ``program_id``.

        Raises:
            ProgramNotFoundError: No program is registered under ``program_id``.
        """
        try:
            return self._entries[program_id]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise ProgramNotFoundError(
                f"no program registered as {program_id!r}; registered: {known}"
            ) from None

    def add(self, program_id: str, entry: Entry) -> None:
        """Register ``entry`` (or replace the registration of the same class).

        Raises:
            ProgramAlreadyRegisteredError: ``program_id`` belongs to another class.
        """
        with self._lock:
            self.check_free(program_id, entry.program_class)
            self._entries[program_id] = entry

    def advance(self, program_id: str, metadata: ProgramMetadata) -> None:
        """Serve ``metadata``'s version if the program is not pinned and it is newer."""
        with self._lock:
            current = self._entries.get(program_id)
            if current is None or current.metadata.pinned:
                return
            if version_key(metadata.version) > version_key(current.metadata.version):
                self._entries[program_id] = replace(current, metadata=metadata)

    def serve(self, program_id: str, metadata: ProgramMetadata) -> bool:
        """Serve ``metadata``'s version from now on (a release); whether it changed."""
        with self._lock:
            current = self._entries.get(program_id)
            if current is None or current.metadata.version == metadata.version:
                return False
            self._entries[program_id] = replace(current, metadata=metadata)
            return True

    def check_free(self, program_id: str, program_class: type) -> None:
        """Check that ``program_id`` is unused or registered for ``program_class``.

        Raises:
            ProgramAlreadyRegisteredError: ``program_id`` belongs to another class.
        """
        current = self._entries.get(program_id)
        if current is not None and current.program_class is not program_class:
            raise ProgramAlreadyRegisteredError(
                f"program id {program_id!r} is already registered for "
                f"{current.metadata.class_path}; cannot register {ps.class_path(program_class)}"
            )


def metadata_for(base: ProgramMetadata, stored: StoredProgram) -> ProgramMetadata:
    """``base`` (id, name, class, pin) updated with a stored version's manifest."""
    manifest = stored.manifest
    return base.model_copy(
        update={
            "version": stored.version,
            "parent_version": manifest.get("parent_version"),
            "optimizer": manifest.get("optimizer"),
            "optimizer_settings": manifest.get("optimizer_settings"),
            "score": manifest.get("score"),
            "trainset_sha256": manifest.get("trainset_sha256"),
            "content_sha256": manifest.get("content_sha256"),
            "dspy_version": manifest.get("dspy_version"),
            "created_at": manifest.get("created_at"),
            "notes": manifest.get("notes"),
            "evaluation": manifest.get("evaluation"),
        }
    )
