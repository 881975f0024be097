"""tools/lock_diff.py: what CI prints when the newest allowed versions differ from the lock."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(lock: Path) -> str:
    return subprocess.run(
        [sys.executable, str(REPO / "tools" / "lock_diff.py"), str(lock)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_the_lock_of_this_environment_reads_as_the_same(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    pins = [f"{d.metadata['Name']}=={d.version}" for d in metadata.distributions()]
    lock.write_text("# a comment\n" + "\n".join(pins) + "\n", encoding="utf-8")
    assert run(lock).strip() == "same as the lock"


def test_a_moved_version_is_printed_locked_then_newest(tmp_path: Path) -> None:
    installed = metadata.version("redis")
    lock = tmp_path / "lock.txt"
    lock.write_text(
        "redis==0.0.1\n    # via llm-server-framework\npyyaml==6.0.1 ; sys_platform == 'x'\n",
        encoding="utf-8",
    )
    out = run(lock)
    assert f"  redis: 0.0.1 -> {installed}" in out.splitlines()
    assert "not locked" in out  # installed here but absent from this lock
