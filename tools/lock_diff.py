"""Print how the packages installed in an environment differ from a lock (constraints) file.

    .venv-newest/bin/python tools/lock_diff.py constraints.txt .venv-newest

Run with the environment's own interpreter: it reads the installed distributions through
``importlib.metadata``. One line per package whose version differs, is only locked, or is
only installed; ``same as the lock`` when nothing differs. It always exits 0: CI prints the
differences before the tests run, so a failure there can be read against them.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(path: Path) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line of a lock file."""
    pins: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[_normal(match.group(1))] = match.group(2)
    return pins


def installed() -> dict[str, str]:
    """``name -> version`` of every distribution this interpreter sees."""
    return {
        _normal(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if dist.metadata["Name"]
    }


def main(argv: list[str]) -> int:
    """Compare the lock at ``argv[0]`` with this interpreter's packages and print the rows."""
    if not argv:
        print(__doc__)
        return 2
    lock = locked(Path(argv[0]))
    have = installed()
    ignored = {"pip", "setuptools", "uv", "llm-server-framework"}
    rows = []
    for name in sorted(set(lock) | set(have) - ignored):
        old, new = lock.get(name), have.get(name)
        if old == new or name in ignored:
            continue
        if new is None:
            continue  # locked for another extra (bench) or platform; not installed here
        rows.append(f"  {name}: {old or 'not locked'} -> {new}")
    print("\n".join(rows) if rows else "  same as the lock")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
