"""Helpers for the benchmark report: the machine, the versions, markdown tables, verdicts."""

from __future__ import annotations

import datetime
import importlib.metadata
import math
import os
import platform
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

_DISTRIBUTIONS = (
    ("llm-server", "llm-server-framework"),
    ("dspy", "dspy"),
    ("litellm", "litellm"),
    ("fastapi", "fastapi"),
    ("starlette", "starlette"),
    ("uvicorn", "uvicorn"),
    ("uvloop", "uvloop"),
    ("httptools", "httptools"),
    ("httpx", "httpx"),
    ("pydantic", "pydantic"),
    ("opentelemetry-sdk", "opentelemetry-sdk"),
    ("py-spy", "py-spy"),
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, str]:
    """CPU model, cores, memory, OS and the date of the run (UTC)."""
    import psutil

    memory_gib = psutil.virtual_memory().total / 2**30
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False)} physical)",
        "memory": f"{memory_gib:.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    """Installed versions of the stack ("not installed" for the optional ones)."""
    found: dict[str, str] = {}
    for label, distribution in _DISTRIBUTIONS:
        try:
            found[label] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[label] = "not installed"
    return found


def git_revision(root: Path) -> str:
    """The checkout's short commit, with ``+dirty`` when tracked files differ from it."""
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "src", "examples"], cwd=root, check=False
        ).returncode
    except OSError:
        return "unknown"
    return rev + ("+dirty" if dirty else "") if rev else "unknown"


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: numbers rounded, ``None``/NaN as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool | None) -> str:
    """``met`` / ``**missed**`` / ``n/a``."""
    if ok is None:
        return "n/a"
    return "met" if ok else "**missed**"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or ``None`` when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def python() -> str:
    """The interpreter every benchmark runs with."""
    return sys.executable
