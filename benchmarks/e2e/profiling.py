"""Where the reference app's CPU goes per request: a sampling profile under load.

    python benchmarks/e2e/profiling.py [--quick] [--app F]

The app runs under uvicorn in its own process, loaded at concurrency 64 against the provider
with 0 ms latency (so the server is CPU-bound and every overhead shows). ``py-spy`` samples it
from outside (no instrumentation overhead, every thread); without py-spy the app profiles
itself with cProfile (main thread only, slower, self time only).

Only samples of the thread holding the GIL count (where the CPU goes). Each is attributed to
the package of its innermost Python frame ("self"; C functions count for the Python code that
called them) and, in "charged", to the innermost frame outside the stdlib, so a lock or an
``os.environ`` read is charged to the package that asked for it. ``llm_server`` own code is its
charged share; "llm_server incl. helpers" also counts what the library calls directly outside
DSPy's and the HTTP stack's subtrees (pydantic, OTel), i.e. everything the library spends
beyond what DSPy and the HTTP call need.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

# Packages whose subtree is "what DSPy and the HTTP call need" (and the server around them).
_DELEGATED = frozenset(
    {"dspy", "litellm", "httpx", "httpcore", "h11", "anyio", "openai", "json_repair", "tiktoken"}
)
_GROUPS = {
    "httpx": "httpx/httpcore",
    "httpcore": "httpx/httpcore",
    "h11": "httpx/httpcore",
    "uvicorn": "uvicorn",
    "httptools": "uvicorn",
    "uvloop": "asyncio/uvloop",
    "asyncio": "asyncio/uvloop",
    "starlette": "starlette/fastapi",
    "fastapi": "starlette/fastapi",
    "pydantic": "pydantic",
    "pydantic_core": "pydantic",
    "e2e": "app",
    "main": "app",
}
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_LINES = True  # hot spots as ``func (file:line)`` of the innermost llm_server frame


def package_of(path: str) -> str:
    """The top-level package of a source path (py-spy's short paths or full ones)."""
    path = path.replace("\\", "/")
    if "site-packages/" in path:
        path = path.rsplit("site-packages/", 1)[1]
    elif "/src/llm_server/" in path:
        return "llm_server"
    elif "/benchmarks/e2e/" in path or "/llm-server-bench-" in path or path == "main.py":
        return "e2e"
    elif "/lib/python3" in path:
        path = path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    head = path.lstrip("/").split("/", 1)[0]
    return head[:-3] if head.endswith(".py") else head


def group_of(package: str) -> str:
    """The report's group of a package (stdlib modules other than asyncio are "stdlib")."""
    if package in _GROUPS:
        return _GROUPS[package]
    if package in ("llm_server", "dspy", "litellm", "opentelemetry"):
        return package
    if package in sys.stdlib_module_names or package.startswith("<"):
        return "stdlib (other)"
    return "other"


def _frames(stack: str) -> list[tuple[str, str]]:
    """``(label, package)`` per frame, outermost first; the label is ``func (file:line)``."""
    frames: list[tuple[str, str]] = []
    for raw in stack.split(";"):
        match = _FRAME.match(raw)
        if match is None:
            continue  # process / thread labels
        package = package_of(match["file"])
        file = match["file"].rsplit("site-packages/", 1)[-1]
        file = file.rsplit("llm_server/", 1)[-1] if package == "llm_server" else file
        label = f"{match['func']} ({file}:{match['line']})" if match["line"] else match["func"]
        frames.append((label, package))
    return frames


def _in_fastapi_telemetry(frames: list[tuple[str, str]]) -> bool:
    """Whether the sample is work of FastAPI's telemetry module itself (or OTel under it)."""
    last = max(
        (i for i, (label, _) in enumerate(frames) if "fastapi/telemetry/" in label), default=None
    )
    if last is None:
        return False
    below = {group_of(p) for _, p in frames[last + 1 :]}
    return below <= {"opentelemetry", "stdlib (other)"}


def attribute_raw(text: str) -> dict[str, Any]:
    """Shares from py-spy's raw (collapsed) output: ``frame;frame;... count`` per line."""
    groups: collections.Counter[str] = collections.Counter()
    charged: collections.Counter[str] = collections.Counter()
    hot: collections.Counter[str] = collections.Counter()
    own_incl = 0
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        package = frames[-1][1]
        groups[group_of(package)] += count
        # Stdlib leaves (locks, os.environ, thread pools) are charged to whoever called them.
        payer = next(
            (g for g in (group_of(p) for _, p in reversed(frames)) if g != "stdlib (other)"),
            "stdlib (other)",
        )
        if _in_fastapi_telemetry(frames):
            payer = "fastapi's own OTel instrumentation"  # FastAPI >= 0.16x, with an SDK set
        charged[payer] += count
        # The library's spending: below its innermost frame, nothing DSPy or HTTP does. Hot
        # spots are its functions with what they call outside DSPy/HTTP (line numbers cut).
        last_ours = max((i for i, (_, p) in enumerate(frames) if p == "llm_server"), default=None)
        if last_ours is not None and not any(p in _DELEGATED for _, p in frames[last_ours + 1 :]):
            own_incl += count
            function = frames[last_ours][0].rsplit(":", 1)[0] + ")"
            helper = next(
                (
                    p
                    for _, p in frames[last_ours + 1 :]
                    if group_of(p) not in ("stdlib (other)", "asyncio/uvloop")
                ),
                None,
            )
            hot[function + (f" -> {helper}" if helper else "")] += count
    result = _shares(groups, hot, total, own_incl)
    result["charged"] = {name: value / (total or 1) for name, value in charged.most_common()}
    result["llm_server_charged"] = charged.get("llm_server", 0) / (total or 1)
    return result


def attribute_pstats(path: Path) -> dict[str, Any]:
    """Self-time shares from a cProfile dump (the fallback)."""
    stats = pstats.Stats(str(path))
    groups: collections.Counter[str] = collections.Counter()
    hot: collections.Counter[str] = collections.Counter()
    total = 0.0
    for (filename, _line, func), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        package = package_of(filename) if filename != "~" else "builtins"
        groups[group_of(package)] += tottime
        if package == "llm_server":
            hot[func] += tottime
        total += tottime
    result = _shares(groups, hot, total, None)
    result["charged"] = result["groups"]
    result["llm_server_charged"] = result["llm_server_self"]
    return result


def _shares(
    groups: collections.Counter[Any], hot: collections.Counter[Any], total: float, own: float | None
) -> dict[str, Any]:
    total = total or 1
    return {
        "samples": total,
        "groups": {name: value / total for name, value in groups.most_common()},
        "llm_server_self": groups.get("llm_server", 0) / total,
        "llm_server_incl_helpers": None if own is None else own / total,
        "hot_spots": [(name, value / total) for name, value in hot.most_common(12)],
    }


def _py_spy() -> str | None:
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def profile_app(
    name: str = "F", *, quick: bool = False, keep: Path | None = None
) -> dict[str, Any]:
    """Profile app ``name`` under load; returns the attribution and the tool used.

    ``keep``: also copy the raw profile (py-spy's collapsed stacks, or the cProfile dump) there.
    """
    seconds = 3.0 if quick else 8.0
    warmup = 1.5
    spy = _py_spy()
    with tempfile.TemporaryDirectory() as folder, _procs.provider() as provider:
        out = Path(folder) / ("profile.txt" if spy else "profile.pstats")
        extra = {} if spy else {"BENCH_CPROFILE": str(out)}
        with _procs.app(name, provider.base_url, extra_env=extra) as app:
            load = subprocess.Popen(
                [
                    _procs.PYTHON,
                    str(_procs.HERE / "loadgen.py"),
                    "--port",
                    str(app.port),
                    "--concurrency",
                    "64",
                    "--warmup",
                    str(warmup),
                    "--duration",
                    str(seconds + 1),
                    "--server-pid",
                    str(app.pid),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            time.sleep(warmup + 0.2)
            if spy:
                command = [spy, "record", "--pid", str(app.pid), "--duration", str(int(seconds))]
                # --gil: only the thread holding the GIL, i.e. where the CPU goes (checked
                # against psutil: GIL-held samples ~= the process's CPU share).
                command += ["--rate", "250", "--gil", "--full-filenames"]
                command += ["--format", "raw", "--output", str(out)]
                subprocess.run(command, check=True, capture_output=True, timeout=120)
            stdout, _ = load.communicate(timeout=120)
            loaded = json.loads(stdout)
        # leaving the block stopped the app: a cProfile dump is now written
        if keep is not None:
            shutil.copy(out, keep)
        result = attribute_raw(out.read_text()) if spy else attribute_pstats(out)
    result["tool"] = "py-spy (sampling, all threads)" if spy else "cProfile (main thread)"
    result["app"] = name
    result["throughput"] = loaded["throughput"]
    result["cpu_ms_per_request"] = (
        (loaded["server_cpu_s"] or 0) / max(1, loaded["completed"]) * 1000
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--app", default="F")
    parser.add_argument("--keep", type=Path, help="save the raw profile here")
    args = parser.parse_args()
    json.dump(profile_app(args.app, quick=args.quick, keep=args.keep), sys.stdout, indent=1)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
