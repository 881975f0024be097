"""What traffic capture at 100 % costs a request: p99 with capture against without, one app.

    python benchmarks/e2e/traffic_overhead.py [--quick]

One provider process (no latency: the framework's own cost is all there is to see), app T
(``apps/t_app.py``: the same program under two ids, one capturing every request to SQLite)
under uvicorn in a process of its own, and the load generator in a third. The two paths are
loaded one after the other in ABBA order, so drift on a noisy machine hits both alike; each
path's rounds are pooled. Prints JSON: each path's throughput, p50/p99 and server CPU per
request, and ``p99_delta_ms`` / ``p99_ratio`` (target: within 2 % or 1 ms, issue 31).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

HERE = Path(__file__).resolve().parent
REFERENCE_CONFIG = HERE.parent.parent / "examples" / "reference_app" / "config"
BODY = '{{"input": "Question {n}: what is {n} plus {n}?", "model_id": "gpt-4o-mini"}}'
PATHS = {
    "capture_off": ("/programs/predictor", BODY),
    "capture_100": ("/programs/captured", BODY),
}
CONCURRENCY = 64


@contextlib.contextmanager
def serve_t(provider_url: str) -> Iterator[_procs.App]:
    """App T under uvicorn, run from a temporary folder holding the reference config."""
    folder = Path(tempfile.mkdtemp(prefix="llm-server-bench-t-"))
    shutil.copytree(REFERENCE_CONFIG, folder / "config")
    port = _procs.free_port()
    env = _procs.app_env(provider_url, {"PYTHONPATH": str(HERE.parent)})
    command = [sys.executable, "-m", "uvicorn", "e2e.apps.t_app:app", "--port", str(port),
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(command, cwd=folder, env=env)
    try:
        _procs.wait_for_port(port, process)
        yield _procs.App("T", process, port)
    finally:
        _procs.stop(process)
        shutil.rmtree(folder, ignore_errors=True)


def measure(*, quick: bool = False) -> dict[str, Any]:
    """Load both paths in ABBA rounds; the pooled results and the p99 comparison."""
    rounds, window_s, warmup_s = (2, 2.0, 1.0) if quick else (4, 4.0, 1.5)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in PATHS}
    with _procs.provider() as provider, serve_t(provider.base_url) as app:
        for index in range(rounds):
            order = list(PATHS) if index % 2 == 0 else list(reversed(PATHS))
            for name in order:
                path, body = PATHS[name]
                result = _procs.load(
                    app.port,
                    concurrency=CONCURRENCY,
                    duration_s=window_s,
                    warmup_s=warmup_s,
                    server_pid=app.pid,
                    path=path,
                    body=body,
                )
                if result["errors"] or set(result["statuses"]) != {"200"}:
                    raise RuntimeError(f"{name}: failed requests: {result['statuses']}")
                runs[name].append(result)
    pooled: dict[str, Any] = {}
    for name, results in runs.items():
        completed = sum(r["completed"] for r in results)
        window = sum(r["window_s"] for r in results)
        cpu = sum(r["server_cpu_s"] or 0.0 for r in results)
        pooled[name] = {
            "throughput": round(completed / window, 1),
            "rounds": [round(r["throughput"], 1) for r in results],
            "p50_ms": round(sum(r["p50_ms"] for r in results) / len(results), 2),
            "p99_ms": round(max(r["p99_ms"] for r in results), 2),
            "cpu_ms_per_request": round(cpu / completed * 1000, 3) if completed else None,
        }
    off, on = pooled["capture_off"]["p99_ms"], pooled["capture_100"]["p99_ms"]
    return {
        "concurrency": CONCURRENCY,
        "paths": pooled,
        "p99_delta_ms": round(on - off, 2),
        "p99_ratio": round(on / off, 3) if off else None,
        "within_target": on - off <= max(0.02 * off, 1.0),
    }


if __name__ == "__main__":
    _procs.measure_cli(measure, __doc__)
