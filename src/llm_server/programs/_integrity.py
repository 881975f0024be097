"""What makes a stored version safe to serve: its manifest, and the checks on loading it.

A version is served only if it was saved from the registered class, with the same signature
fields, its content hash matches its state, and the state fits a fresh instance of the
program (the same predictors, the same shapes).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from llm_server.core.errors import CorruptProgramError, ProgramError
from llm_server.core.protocols import StorageAdapter, StoredProgram
from llm_server.programs import _state as ps
from llm_server.programs._registry import Entry
from llm_server.programs._versioning import canonical_json, sha256_hex

__all__ = ["check_instance", "manifest_for", "verify", "where"]


@runtime_checkable
class _LocatingStorage(Protocol):
    def location(self, program_id: str, version: str) -> str: ...


def verify(entry: Entry, stored: StoredProgram, where: str) -> None:
    """Refuse (:class:`CorruptProgramError`) a version that does not fit ``entry``'s program."""
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


def check_instance(entry: Entry, program: Any) -> None:
    """Refuse (:class:`ProgramError`) saving a program that is not ``entry``'s."""
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


def manifest_for(
    entry: Entry, state: Mapping[str, Any], now: datetime, **lineage: Any
) -> dict[str, Any]:
    """The manifest of a new version of ``entry``'s program holding ``state``."""
    created_at = now.astimezone(UTC).isoformat(timespec="microseconds")
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


def where(storage: StorageAdapter, program_id: str, version: str) -> str:
    """Where a version is, for error messages (its manifest's path when the storage says)."""
    if isinstance(storage, _LocatingStorage):
        return f"{storage.location(program_id, version)}/manifest.json"
    return f"program {program_id!r} version {version!r} in {storage!r}"
