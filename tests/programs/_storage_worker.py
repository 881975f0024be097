"""A separate process that saves program versions, for the crash and concurrency tests.

Usage::

    python _storage_worker.py BASE_DIR MODE WRITER COUNT BLOB_BYTES [GO_FILE]

MODE is ``loop`` (save COUNT versions, printing each assigned version as a JSON line; COUNT 0
means forever) or ``crash-before-publish`` / ``crash-mid-state`` (SIGKILL itself at that point
of the first save). With GO_FILE, the worker creates ``GO_FILE.WRITER.ready`` and then waits
until GO_FILE exists before saving, so several workers start together.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from llm_server import _atomic_files
from llm_server.defaults import FileSystemStorageAdapter


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _install_crash(mode: str) -> None:
    if mode == "crash-before-publish":

        def crash(*_: object) -> bool:
            _kill_self()
            return False  # pragma: no cover

        _atomic_files.rename_no_replace = crash  # type: ignore[assignment]
    elif mode == "crash-mid-state":
        real_write = os.write

        def half_write(fd: int, data: object) -> int:
            view = memoryview(data)  # type: ignore[arg-type]
            real_write(fd, view[: len(view) // 2])
            _kill_self()
            return 0  # pragma: no cover

        os.write = half_write


def main() -> None:
    base_dir, mode, writer, count, blob_bytes = sys.argv[1:6]
    go_file = Path(sys.argv[6]) if len(sys.argv) > 6 else None
    adapter = FileSystemStorageAdapter(base_dir)
    blob = "x" * int(blob_bytes)
    if mode != "loop":
        _install_crash(mode)
    if go_file is not None:
        go_file.with_name(f"{go_file.name}.{writer}.ready").touch()
    while go_file is not None and not go_file.exists():
        time.sleep(0.001)
    i = 0
    while int(count) == 0 or i < int(count):
        state = {"writer": writer, "i": i, "blob": blob}
        stored = adapter.save("prog", state, {"notes": f"{writer}-{i}"})
        print(json.dumps({"writer": writer, "i": i, "version": stored.version}), flush=True)
        i += 1


if __name__ == "__main__":
    main()
