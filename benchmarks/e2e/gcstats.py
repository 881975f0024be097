"""Garbage collection per request: F, H and H+freeze under the same load.

    python benchmarks/e2e/gcstats.py [--quick]

Each app serves a warm-up, then a window at concurrency 64 against the provider with 0 ms
latency; the app process times every collection by generation (``gc.callbacks``, see
``serve.py``), read before and after the window. With DSPy loaded a process holds ~110,000
long-lived objects that every full (generation 2) collection walks unless they are frozen,
which the library's ``ModelManager`` does once at startup (``LLM_SERVER_GC_FREEZE``).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

APPS = ("F", "H", "H_freeze")


def _read(pid: int, path: Path) -> dict[str, Any]:
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and path.stat().st_size:
            try:
                result: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:  # caught mid-write
                time.sleep(0.05)
                continue
            return result
        time.sleep(0.05)
    raise RuntimeError(f"app {pid} wrote no GC statistics")


def measure(*, quick: bool = False, apps: tuple[str, ...] = APPS) -> dict[str, Any]:
    """Per app: collections per 1,000 requests and µs of GC per request, by generation."""
    window = 4.0 if quick else 8.0
    results: dict[str, Any] = {"window_s": window, "concurrency": 64, "apps": {}}
    with tempfile.TemporaryDirectory() as folder, _procs.provider() as provider:
        for name in apps:
            path = Path(folder) / f"{name}.json"
            env = {"BENCH_GC_STATS": str(path)}
            with _procs.app(name, provider.base_url, extra_env=env) as app:
                _procs.load(app.port, concurrency=64, duration_s=1.5, warmup_s=0.5)
                before = _read(app.pid, path)
                loaded = _procs.load(
                    app.port, concurrency=64, duration_s=window, warmup_s=0, server_pid=app.pid
                )
                after = _read(app.pid, path)
            done = max(1, loaded["completed"])
            seconds = [a - b for a, b in zip(after["seconds"], before["seconds"], strict=True)]
            counts = [a - b for a, b in zip(after["counts"], before["counts"], strict=True)]
            results["apps"][name] = {
                "requests": loaded["completed"],
                "cpu_ms_per_request": (loaded["server_cpu_s"] or 0) / done * 1000,
                "gc_us_per_request": [s / done * 1e6 for s in seconds],
                "collections_per_1000": [c * 1000 / done for c in counts],
                "frozen_objects": after["frozen"],
            }
    return results


def main() -> None:
    _procs.measure_cli(measure, __doc__)


if __name__ == "__main__":
    main()
