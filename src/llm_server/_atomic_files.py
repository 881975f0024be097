"""Crash-safe file primitives: fsynced writes, no-follow reads, no-replace renames.

POSIX first; on Windows folder fsync is skipped (NTFS journals renames) and liveness checks
of other processes are not attempted.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Final

__all__ = ["fsync_dir", "pid_alive", "read_file", "rename_no_replace", "write_file"]

_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)


def rename_no_replace(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless ``target`` exists; False when it does."""
    if os.path.lexists(target):
        return False
    try:
        os.rename(source, target)
    except OSError as exc:
        # POSIX: ENOTEMPTY/EEXIST for an existing non-empty folder; Windows: FileExistsError.
        if exc.errno in {errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR}:
            return False
        raise
    return True


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a fsynced ``.part`` file and an atomic replace."""
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NOFOLLOW, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(part, path)


def read_file(path: Path) -> bytes:
    """The bytes of ``path``; refuses to follow a symlink (OSError ELOOP) where supported."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
    with os.fdopen(fd, "rb") as file:
        return file.read()


def fsync_dir(path: Path) -> None:
    """Make a folder's entries (new files, renames) durable."""
    if os.name != "posix":  # Windows cannot open folders; NTFS journals the rename itself.
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (always True off POSIX)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
