"""Cost growth: the reference app's RSS after 1,000 and after 10,000 requests.

    python benchmarks/e2e/rss.py [--quick]

The app serves a first batch of requests (its warm-up: lazy imports, connection pools and
caches fill here), its RSS is read, then it serves nine times as many more and its RSS is read
again. Nothing is retained per request if the second reading is within noise of the first.
H (the same DSPy call without the library) runs alongside as the reference.

The fault storm: the reference app at 200 concurrent requests while every provider answer is a
503, its breaker kept closed (so every request makes its three attempts, 5 ms first backoff)
for the same first batch and total; each reading is taken once the requests the load
generator left in flight have ended. The figure is the RSS growth from start to the end.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from e2e import _procs

CONCURRENCY = 64
STORM_CONCURRENCY = 200
STORM_ENV = {  # every request reaches the failing provider: the breaker never opens
    "LLM_SERVER_BREAKER_FAILURE_THRESHOLD": "1000000000",
    "LLM_SERVER_RETRY_INITIAL_BACKOFF_S": "0.005",
}
SETTLE_S = 2.0  # the load generator stops at its count with requests still in flight


def _serve(port: int, pid: int, requests: int, concurrency: int = CONCURRENCY) -> dict[str, Any]:
    return _procs.load(
        port,
        concurrency=concurrency,
        duration_s=3600,
        warmup_s=0,
        server_pid=pid,
        requests=requests,
    )


def measure(*, quick: bool = False, apps: tuple[str, ...] = ("F", "H")) -> dict[str, Any]:
    """RSS (MiB) of each app at start, after the first batch and after ten times as many."""
    first, total = (500, 5_000) if quick else (1_000, 10_000)
    results: dict[str, Any] = {"first": first, "total": total, "apps": {}}
    with _procs.provider() as provider:
        for name in apps:
            with _procs.app(name, provider.base_url) as app:
                at_start = _procs.rss_mib(app.pid)
                one = _serve(app.port, app.pid, first)
                after_first = _procs.rss_mib(app.pid)
                two = _serve(app.port, app.pid, total - first)
                after_total = _procs.rss_mib(app.pid)
                results["apps"][name] = {
                    "rss_start_mib": at_start,
                    "rss_first_mib": after_first,
                    "rss_total_mib": after_total,
                    "growth_ratio": after_total / after_first,
                    "errors": one["errors"] + two["errors"],
                    "cpu_ms_per_request": (
                        (one["server_cpu_s"] + two["server_cpu_s"])
                        / max(1, one["completed"] + two["completed"])
                        * 1000
                    ),
                }
                print(name, json.dumps(results["apps"][name]), file=sys.stderr, flush=True)
    results["storm"] = storm(first, total)
    print("storm", json.dumps(results["storm"]), file=sys.stderr, flush=True)
    return results


def storm(first: int, total: int) -> dict[str, Any]:
    """The reference app's RSS (MiB) over a fault storm at 200 in flight (module docstring)."""
    with _procs.provider() as provider:
        provider.command("down")
        with _procs.app("F", provider.base_url, extra_env=STORM_ENV) as app:
            at_start = _procs.rss_mib(app.pid)
            one = _serve(app.port, app.pid, first, STORM_CONCURRENCY)
            time.sleep(SETTLE_S)
            after_first = _procs.rss_mib(app.pid)
            two = _serve(app.port, app.pid, total - first, STORM_CONCURRENCY)
            time.sleep(SETTLE_S)
            after_total = _procs.rss_mib(app.pid)
            failed_attempts = int(provider.command("fired"))
    return {
        "concurrency": STORM_CONCURRENCY,
        "rss_start_mib": at_start,
        "rss_first_mib": after_first,
        "rss_total_mib": after_total,
        "growth_mib": after_total - at_start,
        "failed": one["errors"] + two["errors"],  # every answer a 500: each one failed
        "provider_attempts": failed_attempts,
    }


def main() -> None:
    _procs.measure_cli(measure, __doc__)


if __name__ == "__main__":
    main()
