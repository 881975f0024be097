"""Immutable, versioned program storage on the local file system.

Layout (one folder per program, one per version)::

    base_dir/
      <program_id>/
        1.0.0/state.json      DSPy JSON state (module.dump_state()), canonical JSON
        1.0.0/manifest.json   lineage + integrity: sha256 of state.json, program id, version
        1.1.0/...
        .tmp-<host>-<pid>-<random>/   a save in progress (never listed, cleaned up when stale)

How a save stays safe:

1. Everything is written into a private temporary folder next to the versions; each file is
   flushed and fsynced, then the folder itself is fsynced.
2. The folder is published with one ``rename`` to its version name. A rename is atomic, so a
   version is either absent or complete; a crash leaves only a temporary folder, which
   :meth:`FileSystemStorageAdapter.list_versions` and :meth:`~FileSystemStorageAdapter.load`
   ignore and :meth:`~FileSystemStorageAdapter.cleanup_stale` removes.
3. Renaming onto an existing version fails (a published version is never empty, and POSIX
   refuses to replace a non-empty folder; Windows refuses any existing target), so a version is
   never overwritten. When two processes race for the same next version, the loser re-reads the
   versions and tries the next one; both saves succeed with distinct versions.

Only JSON is ever written or read: no pickle, so loading a program cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from llm_server import _atomic_files as _atomic
from llm_server._atomic_files import fsync_dir, pid_alive, read_file, write_file
from llm_server.core.errors import (
    CorruptProgramError,
    ProgramError,
    ProgramNotFoundError,
    StorageError,
    VersionExistsError,
)
from llm_server.core.protocols import StoredProgram
from llm_server.programs._canary import LocalCanaryBook
from llm_server.programs._versioning import (
    canonical_json,
    is_version,
    next_version,
    sha256_hex,
    sort_versions,
    validate_program_id,
    validate_version,
)

__all__ = ["MANIFEST_FORMAT", "FileSystemStorageAdapter"]

MANIFEST_FORMAT: Final = "llm-server-program/1"
STATE_FILE: Final = "state.json"
MANIFEST_FILE: Final = "manifest.json"
_TEMP_PREFIX: Final = ".tmp-"
_RESERVED_KEYS: Final = frozenset(
    {"format", "program_id", "version", "state_sha256", "state_bytes"}
)
_HOST: Final = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


class FileSystemStorageAdapter(LocalCanaryBook):
    """Stores immutable program versions as JSON folders under ``base_dir``.

    Versions are named ``MAJOR.MINOR.PATCH``; each save gets the next MINOR of the highest
    stored version (``1.0.0``, ``1.1.0``, ...) unless an explicit ``version`` is given.
    File I/O is synchronous: async code calls it from a worker thread (the program manager
    does so with its own limiter).

    Canaries (:meth:`start_canary`, :meth:`canaries`) are kept in this process's memory, like
    the program manager's releases with files: use PostgreSQL to canary across a fleet.

    Args:
        base_dir: The folder holding one sub-folder per program; created on the first save.
        stale_temp_after_s: Age after which a leftover temporary folder counts as abandoned
            even when its owner cannot be checked (for example one written from another host).
        max_save_attempts: How many version names a save tries when other writers keep taking
            the next one.
        clock: Wall clock (seconds since the epoch), injectable for tests.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        *,
        stale_temp_after_s: float = 3600.0,
        max_save_attempts: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._base_dir = Path(base_dir).absolute()
        self._stale_temp_after_s = stale_temp_after_s
        self._max_save_attempts = max_save_attempts
        self._clock = clock

    def __repr__(self) -> str:
        return f"FileSystemStorageAdapter(base_dir={str(self._base_dir)!r})"

    @property
    def base_dir(self) -> Path:
        """The absolute storage folder."""
        return self._base_dir

    def location(self, program_id: str, version: str) -> str:
        """The folder of one version (for messages and operators; it may not exist)."""
        return str(self._version_dir(program_id, version))

    # --- save ----------------------------------------------------------------------------

    def save(
        self,
        program_id: str,
        state: Mapping[str, Any],
        manifest: Mapping[str, Any],
        *,
        version: str | None = None,
    ) -> StoredProgram:
        """Store a new immutable version and return it with its assigned version name.

        Args:
            program_id: The program's id (validated as a safe folder name).
            state: The DSPy JSON state (``module.dump_state()``).
            manifest: Lineage metadata to store with it. The keys ``format``, ``program_id``,
                ``version``, ``state_sha256`` and ``state_bytes`` are set by the adapter.
            version: An explicit version name; by default the next one is assigned.

        Raises:
            InvalidIdentifierError: ``program_id`` or ``version`` is not a safe name.
            VersionExistsError: The explicit ``version`` already exists.
            ProgramError: ``state`` or ``manifest`` is not JSON-serialisable.
            StorageError: The file system failed.
        """
        program_dir = self._program_dir(program_id)
        if version is not None:
            validate_version(version)
        if not isinstance(state, Mapping) or not isinstance(manifest, Mapping):
            raise ProgramError("state and manifest must be mappings")
        state_bytes = canonical_json(dict(state))
        lineage = {k: v for k, v in manifest.items() if k not in _RESERVED_KEYS}
        canonical_json(lineage)  # refuse unserialisable lineage before touching the disk
        try:
            self._ensure_dir(program_dir)
            self._cleanup_stale_in(program_dir)
            temp_dir = self._make_temp_dir(program_dir)
        except OSError as exc:
            raise StorageError(f"cannot prepare {program_dir}: {exc}") from exc
        try:
            write_file(temp_dir / STATE_FILE, state_bytes)
            return self._publish(
                program_id=program_id,
                program_dir=program_dir,
                temp_dir=temp_dir,
                state_bytes=state_bytes,
                lineage=lineage,
                version=version,
            )
        except OSError as exc:
            raise StorageError(f"saving program {program_id!r} failed: {exc}") from exc
        finally:
            # After a successful publish the folder no longer exists under its temporary name.
            shutil.rmtree(temp_dir, ignore_errors=True)

    def _publish(
        self,
        *,
        program_id: str,
        program_dir: Path,
        temp_dir: Path,
        state_bytes: bytes,
        lineage: dict[str, Any],
        version: str | None,
    ) -> StoredProgram:
        for _ in range(self._max_save_attempts):
            candidate = version or next_version(self._version_names(program_dir))
            manifest = {
                **lineage,
                "format": MANIFEST_FORMAT,
                "program_id": program_id,
                "version": candidate,
                "state_sha256": sha256_hex(state_bytes),
                "state_bytes": len(state_bytes),
            }
            write_file(temp_dir / MANIFEST_FILE, _pretty_json(manifest))
            fsync_dir(temp_dir)
            target = program_dir / candidate
            if _atomic.rename_no_replace(temp_dir, target):
                fsync_dir(program_dir)
                return StoredProgram(
                    program_id=program_id,
                    version=candidate,
                    state=json.loads(state_bytes),
                    manifest=manifest,
                )
            if version is not None:
                raise VersionExistsError(
                    f"program {program_id!r} already has version {version!r} ({target}); "
                    "versions are immutable"
                )
        raise StorageError(
            f"could not assign a version to program {program_id!r} after "
            f"{self._max_save_attempts} attempts: other writers kept taking the next one"
        )

    # --- load and list ---------------------------------------------------------------------

    def load(self, program_id: str, version: str | None = None) -> StoredProgram:
        """Load a pinned version, or the latest when ``version`` is ``None``.

        Raises:
            InvalidIdentifierError: ``program_id`` or ``version`` is not a safe name.
            ProgramNotFoundError: The program or the version does not exist.
            CorruptProgramError: A file is missing, truncated, tampered with or not valid
                JSON; the message names the file.
        """
        program_dir = self._program_dir(program_id)
        if version is None:
            versions = self.list_versions(program_id)
            if not versions:
                raise ProgramNotFoundError(f"program {program_id!r} has no stored versions")
            version = versions[-1]
        version_dir = program_dir / validate_version(version)
        try:
            mode = version_dir.lstat().st_mode
        except FileNotFoundError:
            known = ", ".join(self.list_versions(program_id)) or "(none)"
            raise ProgramNotFoundError(
                f"program {program_id!r} has no version {version!r}; stored versions: {known}"
            ) from None
        if not stat.S_ISDIR(mode):
            raise CorruptProgramError(f"{version_dir} is not a folder (symlink or file)")
        manifest_path = version_dir / MANIFEST_FILE
        manifest = _parse_json(manifest_path, _read_file(manifest_path))
        _check_manifest(manifest_path, manifest, program_id, version)
        state_path = version_dir / STATE_FILE
        raw = _read_file(state_path)
        if sha256_hex(raw) != manifest["state_sha256"]:
            raise CorruptProgramError(
                f"{state_path}: sha256 does not match its manifest (truncated or modified)"
            )
        return StoredProgram(
            program_id=program_id,
            version=version,
            state=_parse_json(state_path, raw),
            manifest=manifest,
        )

    def list_versions(self, program_id: str) -> list[str]:
        """The program's published versions, oldest first (empty for an unknown program)."""
        program_dir = self._program_dir(program_id)
        try:
            with os.scandir(program_dir) as entries:
                names = [
                    e.name
                    for e in entries
                    if is_version(e.name) and e.is_dir(follow_symlinks=False)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            raise StorageError(f"cannot list {program_dir}: {exc}") from exc
        return sort_versions(names)

    def list_programs(self) -> list[str]:
        """Ids of the programs with a folder under ``base_dir``, sorted."""
        try:
            with os.scandir(self._base_dir) as entries:
                return sorted(
                    e.name
                    for e in entries
                    if e.is_dir(follow_symlinks=False) and not e.name.startswith(".")
                )
        except FileNotFoundError:
            return []

    # --- leftovers -------------------------------------------------------------------------

    def cleanup_stale(self, program_id: str | None = None) -> int:
        """Remove temporary folders left by crashed saves; return how many were removed.

        A folder is stale when the process that wrote it (same host) no longer runs, or when it
        is older than ``stale_temp_after_s``. Folders of saves still in progress are kept.
        """
        ids = [program_id] if program_id is not None else self.list_programs()
        return sum(self._cleanup_stale_in(self._program_dir(pid)) for pid in ids)

    def _cleanup_stale_in(self, program_dir: Path) -> int:
        removed = 0
        try:
            with os.scandir(program_dir) as entries:
                temps = [e for e in entries if e.name.startswith(_TEMP_PREFIX)]
        except FileNotFoundError:
            return 0
        for entry in temps:
            if self._is_stale(entry):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed += 1
        return removed

    def _is_stale(self, entry: os.DirEntry[str]) -> bool:
        parts = entry.name[len(_TEMP_PREFIX) :].rsplit("-", 2)
        local = len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit()
        if local and not pid_alive(int(parts[1])):
            return True
        # Otherwise only age tells (another host, or the pid was reused by a new process).
        try:
            age = self._clock() - entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return False  # another cleaner got there first
        return age > self._stale_temp_after_s

    # --- paths -----------------------------------------------------------------------------

    def _program_dir(self, program_id: str) -> Path:
        return self._base_dir / validate_program_id(program_id)

    def _version_dir(self, program_id: str, version: str) -> Path:
        return self._program_dir(program_id) / validate_version(version)

    def _version_names(self, program_dir: Path) -> list[str]:
        # Every entry named like a version counts, even a stray file, so numbering skips it.
        with os.scandir(program_dir) as entries:
            return [e.name for e in entries if is_version(e.name)]

    def _ensure_dir(self, program_dir: Path) -> None:
        for folder in (self._base_dir, program_dir):
            if not folder.is_dir():
                folder.mkdir(parents=True, exist_ok=True)
                fsync_dir(folder.parent)

    def _make_temp_dir(self, program_dir: Path) -> Path:
        # os.mkdir (not mkdtemp) so the published folder gets the umask's permissions, not 0700.
        while True:
            path = program_dir / f"{_TEMP_PREFIX}{_HOST}-{os.getpid()}-{secrets.token_hex(8)}"
            with contextlib.suppress(FileExistsError):
                path.mkdir()
                return path


def _is_version_dir(entry: os.DirEntry[str]) -> bool:
    return is_version(entry.name) and entry.is_dir(follow_symlinks=False)


def _read_file(path: Path) -> bytes:
    try:
        return read_file(path)
    except FileNotFoundError:
        raise CorruptProgramError(f"{path} is missing") from None
    except OSError as exc:
        # ELOOP: the file is a symlink, which this adapter never writes.
        raise CorruptProgramError(f"{path} cannot be read: {exc.strerror}") from exc


def _parse_json(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptProgramError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CorruptProgramError(f"{path} does not hold a JSON object")
    return value


def _check_manifest(path: Path, manifest: dict[str, Any], program_id: str, version: str) -> None:
    expected = {"format": MANIFEST_FORMAT, "program_id": program_id, "version": version}
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise CorruptProgramError(
                f"{path}: {key} is {manifest.get(key)!r}, expected {value!r} "
                "(moved, copied or modified)"
            )
    if not isinstance(manifest.get("state_sha256"), str):
        raise CorruptProgramError(f"{path}: state_sha256 is missing")


def _pretty_json(value: Mapping[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
